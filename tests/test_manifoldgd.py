"""ManifoldGD: the fast manifold term equals the public code's D x D eigendecomposition, guidance
off gives the unguided images, chunking changes nothing, hierarchical centres, bad input."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ddapp.jobs import build
from ddapp.stages import prepare_distillation
from ddcore.data.small import digits
from ddcore.errors import UserError
from ddcore.hierarchical import Node, bisecting_tree, hierarchical_centres, pick_by_levels
from ddcore.sampling import StepContext
from manifoldgd.guidance import ManifoldGuidance, ManifoldSettings
from manifoldgd.manifold import annealed_radius, noisy_cloud, normal_step
from mgd3.guidance import ModeGuidance
from mgd3.modes import ModeDiscovery
from tests.configs import generator_settings
from tests.manifold_reference import direct_normal_step
from tests.test_generators_pretrained import sd_folder  # noqa: F401 (fixture)


def step_context(x, index=40, alpha_bar=0.3, sampler="ddpm"):
    ab = torch.tensor(alpha_bar)
    return StepContext(
        index=index,
        timestep=torch.tensor(800),
        x0_hat=torch.zeros_like(x),
        sigma=torch.tensor(0.2),
        alpha_bar=ab,
        sampler=sampler,
        x=x,
        alpha_bar_prev=torch.tensor(0.35),
    )


def manifold_hook(centres, scale=0.1, lam=0.0, **settings):
    return ManifoldGuidance(
        ModeGuidance(centres, lam, t_sg=25),
        centres,
        ManifoldSettings(scale=scale, **settings),
        steps=50,
        seed=7,
    )


# -- the manifold term --------------------------------------------------------------------------
@pytest.mark.parametrize("tangent_dim", [1, 3, 6])
def test_svd_step_equals_direct_dxd_eigendecomposition(tangent_dim):
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 48, generator=g, dtype=torch.float64)
    clouds = torch.stack([noisy_cloud(c, 0.5, 0.6, 300, g).double() for c in centres])
    x = centres + 0.8 * torch.randn(4, 48, generator=g, dtype=torch.float64)
    fast = normal_step(x, clouds, neighbours=12, tangent_dim=tangent_dim, bandwidth=0.2, scale=0.1)
    direct = direct_normal_step(x, clouds, 12, tangent_dim, 0.2, 0.1)
    assert torch.allclose(fast, direct, atol=1e-5, rtol=0)
    assert (fast.norm(dim=1) <= 0.1 + 1e-6).all() and fast.norm(dim=1).min() > 0.05


def test_hook_term_in_float32_equals_direct_eigendecomposition():
    centres = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    hook = manifold_hook(centres)
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(2))
    ctx = step_context(x)
    clouds = hook.clouds(ctx).double()
    direct = direct_normal_step(x.flatten(1).double(), clouds, 12, 3, 0.2, 0.1)
    assert torch.allclose(hook.manifold_term(ctx).flatten(1).double(), direct, atol=1e-5, rtol=0)
    # added to the posterior mean unscaled (DDPM); DDIM: as a shift of x0_hat re-derived into eps
    assert torch.allclose(hook.adjust_prev(torch.zeros_like(x), ctx), hook.manifold_term(ctx))
    ddim = step_context(x, sampler="ddim")
    coef = math.sqrt(0.35) - math.sqrt(0.65) * math.sqrt(0.3 / 0.7)
    assert torch.allclose(hook.adjust_prev(torch.zeros_like(x), ddim), coef * hook.manifold_term(ddim))


def test_cloud_is_noised_to_the_timestep_and_seeded_per_sample_and_step():
    centre = torch.full((4096,), 3.0)
    cloud = noisy_cloud(centre, 0.05, 1.0, 300, torch.Generator().manual_seed(0))
    radii = (cloud - centre).norm(dim=1)  # abar = 1: no noise, radii as drawn
    assert cloud.shape == (300, 4096) and radii[:150].max() <= 0.1 + 1e-5
    assert torch.allclose(radii[:150], torch.linspace(0.1, 0.05, 150), atol=1e-5)
    assert radii[150:].max() <= 0.05 + 1e-6
    noisy = noisy_cloud(centre, 0.05, 0.25, 300, torch.Generator().manual_seed(0))
    assert abs(float(noisy.mean()) - 0.5 * 3.0) < 0.01 and abs(float(noisy.std()) - 0.75**0.5) < 0.01
    hook = manifold_hook(torch.randn(2, 8))
    x = torch.zeros(2, 8)
    assert torch.equal(hook.clouds(step_context(x)), hook.clouds(step_context(x)))
    assert not torch.equal(hook.clouds(step_context(x, 40)), hook.clouds(step_context(x, 39)))


def test_radius_anneals_from_max_mult_to_r_over_the_warm_steps():
    r = [annealed_radius(i, 50, 0.05, 25, 2.0, 5, "exp") for i in (49, 47, 45, 44, 30)]
    assert r[0] == pytest.approx(0.1) and r[3] == r[4] == 0.05
    assert r[0] > r[1] > r[2] > r[3]
    p = 0.6  # index 47: (47 - 44) / 5
    assert r[1] == pytest.approx(0.05 * (1 + (math.exp(p) - 1) / (math.e - 1)))
    assert annealed_radius(47, 50, 0.05, 25, 2.0, 5, "linear") == pytest.approx(0.05 * 1.6)
    assert annealed_radius(47, 50, 0.05, 47, 2.0, 5, "cosine") == 0.05  # not past t_sg


def test_hook_is_off_at_and_below_t_sg_and_chunks_see_the_same_clouds():
    centres = torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    hook = manifold_hook(centres, lam=0.1)
    x = torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    assert torch.equal(hook.adjust_prev(x, step_context(x, index=25)), x)
    whole = hook.adjust_prev(x, step_context(x))
    for start, n in ((0, 2), (2, 3), (4, 1)):
        part = x[start : start + n]
        chunk = hook.subset(start, n).adjust_prev(part, step_context(part))
        assert torch.allclose(chunk, whole[start : start + n], atol=1e-6)


# -- through the distiller ----------------------------------------------------------------------
FEW_STEPS = ("method.steps=10", "method.t_sg=4")  # guided indices 9..5: warm-up included


def test_lam_and_manifold_scale_zero_give_exactly_the_unguided_images(make_cfg):
    data, unguided, generator = prepare_distillation(make_cfg("method.steps=10", "method=unguided"))
    off = build(make_cfg(*FEW_STEPS, "method=manifoldgd", "method.lam=0", "method.manifold_scale=0").method)
    manifold_only = build(make_cfg(*FEW_STEPS, "method=manifoldgd", "method.lam=0").method)
    for label in (0, 7):  # per class, as every run (whole or sharded) samples
        plain, _ = unguided.distill_class(data, label, 2, 0, generator)
        assert torch.equal(off.distill_class(data, label, 2, 0, generator)[0], plain)
        # the manifold term alone moves the samples
        assert not torch.equal(manifold_only.distill_class(data, label, 2, 0, generator)[0], plain)


def test_images_do_not_depend_on_chunking(make_cfg):
    # DDIM (eta = 0) draws no step noise, so only the manifold clouds could depend on chunking
    ddim = (*FEW_STEPS, "method=manifoldgd", "method.sampler=ddim", "method.injection=x0")
    data, whole, generator = prepare_distillation(make_cfg(*ddim))
    chunked = build(make_cfg(*ddim, "method.batch_size=2").method)
    for label in (0, 7):  # each class on its own, as a shard runs it
        one_batch, _ = whole.distill_class(data, label, 3, 0, generator)
        in_chunks, _ = chunked.distill_class(data, label, 3, 0, generator)
        assert torch.allclose(one_batch, in_chunks, atol=1e-4)


# -- hierarchical IPC centres ------------------------------------------------------------------
def exact_dist(a, b):
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def three_blobs(per=(20, 30, 25), seed=0):
    g = torch.Generator().manual_seed(seed)
    means = torch.tensor([[0.0] * 6, [20.0] * 6, [0.0, 0.0, 0.0, 20.0, 20.0, 20.0]])
    points = torch.cat([m + 0.3 * torch.randn(n, 6, generator=g) for m, n in zip(means, per)])
    return points, means


@pytest.mark.parametrize(
    "method, linkage",
    [
        ("agglomerative", "ward"),
        ("agglomerative", "average"),
        ("agglomerative", "complete"),
        ("agglomerative", "single"),
        ("divisive", "ward"),
        ("divisive_levels", "ward"),
    ],
)
@pytest.mark.parametrize("closest", [False, True])
def test_three_separated_blobs_give_three_centres_near_their_means(method, linkage, closest):
    points, means = three_blobs()
    centres = hierarchical_centres(
        points, 3, method, seed=0, linkage=linkage, closest=closest, backend="torch"
    )
    dist = torch.cdist(centres, means)
    assert sorted(dist.argmin(dim=1).tolist()) == [0, 1, 2]
    assert dist.min(dim=1).values.max() < (1.5 if closest else 0.3)
    if closest:  # real points, one per blob
        assert exact_dist(centres, points).min(dim=1).values.max() == 0


def test_divisive_splits_by_sse_or_variance_and_is_seeded():
    points, means = three_blobs(per=(40, 5, 5))
    for criterion in ("sse", "var"):
        a = hierarchical_centres(points, 3, "divisive", seed=1, criterion=criterion, backend="torch")
        assert torch.equal(
            a, hierarchical_centres(points, 3, "divisive", seed=1, criterion=criterion, backend="torch")
        )
    _, leaves = bisecting_tree(points, 3, seed=0, backend="torch")
    assert sorted(len(leaf.idx) for leaf in leaves) == [5, 5, 40]
    assert sorted(leaf.depth for leaf in leaves) == [1, 2, 2]


def test_levels_pick_one_leaf_per_depth_from_the_level_then_the_deepest():
    leaves = [Node(np.array([i]), depth) for i, depth in enumerate([1, 2, 3, 3])]
    depths = lambda level: [n.depth for n in pick_by_levels(leaves, 3, level, seed=0)]  # noqa: E731
    assert depths(2) == [1, 2, 3]  # level 2 = depth 1: one leaf per depth from there
    assert depths(3) == [2, 3, 3]  # the rest from the deepest level
    assert depths(9) == [3, 3, 2]  # past the deepest: start at the deepest
    # a tree of ipc leaves (the public code): the level only orders the same centres
    points, _ = three_blobs()
    divisive = hierarchical_centres(points, 3, "divisive", seed=0, backend="torch")
    for level in (1, 2, 6):
        picked = hierarchical_centres(points, 3, "divisive_levels", seed=0, level=level, backend="torch")
        assert exact_dist(picked, divisive).min(dim=1).values.max() == 0
    deeper = hierarchical_centres(
        points, 3, "divisive_levels", seed=0, level=2, tree_leaves=6, backend="torch"
    )
    assert deeper.shape == (3, 6) and torch.isfinite(deeper).all()


# -- configs, CLI, bad input --------------------------------------------------------------------
def test_distill_task_writes_the_set_and_the_centres(make_cfg):
    """method=manifoldgd as run.py composes, checks and runs it, in this process (the run.py
    wrapper itself is tested in test_cli.py and test_reliability.py)."""
    from ddapp.config_checks import check_config

    cfg = make_cfg("method=manifoldgd", "task=distill", *FEW_STEPS)
    check_config(cfg)
    build(cfg.task)(cfg)
    run_dir = Path(cfg.paths.output_dir)
    assert len(list((run_dir / "distilled").glob("*/*.png"))) == 20
    manifest = json.loads((run_dir / "distilled" / "manifest.json").read_text())
    assert manifest["method"] == "manifoldgd"
    assert torch.load(run_dir / "distilled" / ".modes" / "3.pt").shape[0] == 2


def test_defaults_follow_the_public_scripts(make_cfg):
    method = build(make_cfg("method=manifoldgd").method)
    s = method.settings
    assert (method.steps, method.sampler, method.t_sg, method.lam) == (50, "ddpm", 25, 0.1)
    assert (s.scale, s.radius, s.bandwidth, s.tangent_dim, s.neighbours, s.cloud_points) == (
        0.1,
        0.05,
        0.2,
        3,
        12,
        300,
    )
    assert (s.warm_steps, s.max_mult, s.schedule) == (5, 2.0, "exp")
    assert (method.discovery.method, method.discovery.level) == ("divisive_levels", 6)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("method.tangent_dim=12", "method.tangent_dim=12 must be smaller than method.neighbours=12"),
        ("method.radius=0", "method.radius must be > 0"),
        ("method.radius=-0.1", "method.radius must be > 0"),
        ("method.mode_discovery=spectral", "unknown method.mode_discovery 'spectral'"),
        ("method.linkage=centroid", "unknown method.linkage 'centroid'"),
        ("method.divisive_criterion=gini", "unknown method.divisive_criterion 'gini'"),
        ("method.centres=medoid", "unknown method.centres 'medoid'"),
        ("method.radius_schedule=step", "unknown method.radius_schedule 'step'"),
    ],
)
def test_bad_settings_fail_in_the_constructor_with_one_line(make_cfg, override, expected):
    with pytest.raises(UserError, match=expected) as err:
        build(make_cfg("method=manifoldgd", override).method)
    assert "\n" not in str(err.value)


def test_ipc_larger_than_the_class_for_closest_real_centres_fails_before_any_work(make_cfg):
    cfg = make_cfg("method=manifoldgd", "method.centres=closest_real", "ipc=1000")
    with pytest.raises(UserError, match="ipc=1000 exceeds .*closest-real centres") as err:
        prepare_distillation(cfg)
    assert "\n" not in str(err.value)


def test_mgd3_can_use_the_hierarchical_centres(make_cfg):
    cfg = make_cfg("method=mgd3", "method.mode_discovery=divisive_levels")
    assert build(cfg.method).discovery == ModeDiscovery("divisive_levels", "auto")


def test_sweep_varies_the_four_knobs_around_the_scripts_defaults(make_cfg):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = make_cfg("experiment=manifoldgd_sweep", tiny=False)
    params = cfg.hydra.sweeper.params
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    points = {o.get_key_element(): list(o.sweep_iterator()) for o in parsed}
    assert sorted(points) == [
        "method.divisive_level",
        "method.manifold_scale",
        "method.radius",
        "method.tangent_dim",
    ]
    assert 0.0 in points["method.manifold_scale"] and 6 in points["method.divisive_level"]
    assert cfg.method._target_ == "manifoldgd.distiller.ManifoldGD" and cfg.ipc == 10
    assert cfg.hydra.runtime.choices.generator == "dit_xl2"


def test_works_with_a_text_generator_and_a_latent_learned_variance_dit(sd_folder, tmp_path):  # noqa: F811
    """Stable Diffusion (prompts) and a DiT-XL/2-shaped model (VAE latents, learned sigma)."""
    from ddapp.schemas import ManifoldGDSchema, from_schema
    from ddcore.generators.dit import load_dit
    from ddcore.generators.stable_diffusion import load_stable_diffusion
    from tests.test_generators_dit import save_tiny_dit
    from tests.test_generators_pretrained import RES, make_data

    method = from_schema(
        ManifoldGDSchema, steps=4, t_sg=1, cloud_points=20, latent_cache_dir=str(tmp_path / "lat")
    )
    sd_data = make_data()
    sd = load_stable_diffusion(sd_data, **generator_settings("sd15", path=str(sd_folder), resolution=RES))
    images, info = method.distill_class(sd_data, 0, 2, 0, sd)
    assert images.shape == (2, 3, RES, RES) and torch.isfinite(images).all()
    folder = save_tiny_dit(tmp_path / "dit", num_classes=10, vae=True, learned_variance=True)
    data = digits()
    dit = load_dit(
        data,
        **generator_settings("dit_xl2", path=str(folder), vae=None, resolution=16, class_space="dataset"),
    )
    images, _ = method.distill_class(data, 3, 2, 0, dit)
    assert images.shape == (2, 1, 16, 16) and torch.isfinite(images).all()
