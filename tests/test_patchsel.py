"""Diffusion-driven patch selection (method=patchsel) with tiny models.

Geometry and selection rules on hand-made inputs; relevance batching; the cached re-selection
(zero model calls, same images as a fresh run); tiling and single-patch outputs; sharding and
resume; a text-conditioned (tiny Stable Diffusion) and a class-conditional (tiny DiT) model
end to end; bad input.
"""

import threading
import time
from pathlib import Path

import pytest
import torch

from ddapp.schemas import PatchSelectionSchema, from_schema, schema_settings
from ddcore.data.base import ImageClassificationData, TensorSource
from ddcore.data.classes import subset_wnids, wnid_names
from ddcore.data.small import digits
from ddcore.distilled import load_distilled
from ddcore.errors import UserError
from ddcore.generators.base import ClassConditionalGenerator, PixelIdentityCodec
from ddcore.generators.self_trained.denoiser import build_denoiser, null_label_of
from ddcore.sharding import Shard, distill_to_folder
from patchsel.distiller import PatchSelection
from patchsel.patches import best_windows, cells_to_pixels, compose, tile_2x2, window_cells
from patchsel.relevance import relevance_maps
from patchsel.selection import choose_patches
from tests.configs import generator_settings

ARCH = dict(num_layers=1, num_attention_heads=2, attention_head_dim=8, patch_size=2)


def tiny_dit(data, seed=0, resolution=None):
    """An untrained pixel-space DiT: enough for shapes, determinism and call counts."""
    torch.manual_seed(seed)
    resolution = resolution or data.resolution
    denoiser = build_denoiser("dit", data.channels, resolution, data.num_classes, ARCH)
    return ClassConditionalGenerator(
        denoiser,
        PixelIdentityCodec(),
        {"num_train_timesteps": 1000},
        model_classes=data.num_classes,
        null_label=null_label_of(denoiser),
        resolution=resolution,
        image_channels=data.channels,
        cfg_scale=3.0,
        name="tiny",
    )


class CallCounter:
    """Counts the generator's model calls (denoiser forwards and encodes)."""

    def __init__(self, generator):
        self.calls = 0
        for name in ("denoise", "encode"):
            original = getattr(generator, name)

            def counted(*args, _original=original, **kwargs):
                self.calls += 1
                return _original(*args, **kwargs)

            setattr(generator, name, counted)


@pytest.fixture(scope="module")
def data():
    return digits()


@pytest.fixture(scope="module")
def generator(data):
    return tiny_dit(data)


SMALL = {
    "draws": 2,
    "batch_size": 64,
    "kmeans_backend": "torch",
    "clusters": 4,
    "top_clusters": 2,
    "images_per_class": 24,
}


def method(cache_dir=None, **kwargs):
    """Small settings: 24 images per class, 2 draws, M = 4, N = 2."""
    return from_schema(
        PatchSelectionSchema,
        score_cache=cache_dir is not None,
        score_cache_dir=cache_dir,
        **{**SMALL, **kwargs},
    )


# -- geometry ---------------------------------------------------------------------------------
def test_tile_2x2_puts_patches_in_reading_order():
    patches = torch.stack([torch.full((1, 8, 8), v) for v in (0.1, 0.2, 0.3, 0.4)])
    tiled = tile_2x2(patches, 16)
    assert tiled.shape == (1, 1, 16, 16)
    quadrants = [tiled[0, 0, :8, :8], tiled[0, 0, :8, 8:], tiled[0, 0, 8:, :8], tiled[0, 0, 8:, 8:]]
    assert [round(float(q.mean()), 3) for q in quadrants] == [0.1, 0.2, 0.3, 0.4]
    assert compose(torch.rand(8, 3, 12, 12), 4, 32).shape == (2, 3, 32, 32)
    assert compose(torch.rand(3, 3, 12, 12), 1, 32).shape == (3, 3, 32, 32)


def test_best_window_covers_the_hot_region():
    maps = torch.zeros(2, 32, 32)
    maps[0, 22:32, 0:10] = 1.0  # bottom left corner
    maps[1, 0:8, 24:32] = 1.0  # top right corner
    window = window_cells(224, 256, 32)
    assert window == 28
    cells, scores = best_windows(maps, window)
    pixels = cells_to_pixels(cells, 32, 256, 224)
    assert pixels[0].tolist() == [32, 0] and pixels[1].tolist() == [0, 32]  # unique best windows
    assert torch.allclose(scores, torch.tensor([100 / 784, 64 / 784]))
    assert (pixels >= 0).all() and (pixels <= 256 - 224).all()


# -- selection rules --------------------------------------------------------------------------
def test_clusters_give_their_quota_closest_first_then_relevance_fills():
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    offsets = torch.tensor([[0.3, 0.0], [0.1, 0.0], [0.2, 0.0], [0.0, 0.4]])
    features = torch.cat([c + offsets for c in centres])  # 3 clusters of 4
    relevance = torch.tensor(
        [
            1.0,
            1.1,
            1.2,
            9.0,  # cluster 0: median 1.15
            5.0,
            5.0,
            5.0,
            5.0,  # cluster 1: median 5
            3.0,
            3.0,
            3.0,
            3.0,
        ]
    )  # cluster 2: median 3
    picked = choose_patches(features, relevance, 5, clusters=3, top_clusters=2, seed=0, backend="torch")
    # quota 5 // 2 = 2 from cluster 1 then 2 from cluster 2, closest to the centroid first;
    # the fifth is the most relevant patch left (index 3, relevance 9)
    centroid_1 = features[4:8].mean(0)
    closest_1 = torch.argsort((features[4:8] - centroid_1).pow(2).sum(1))[:2] + 4
    centroid_2 = features[8:12].mean(0)
    closest_2 = torch.argsort((features[8:12] - centroid_2).pow(2).sum(1))[:2] + 8
    assert picked == closest_1.tolist() + closest_2.tolist() + [3]
    assert choose_patches(features, relevance, 3, clustering=False) == [3, 4, 5]


# -- relevance --------------------------------------------------------------------------------
def test_relevance_batched_equals_two_passes_and_ignores_batch_size(data, generator):
    latents = generator.encode(data.class_images(3)[:6])
    cond, null = generator.condition(torch.tensor([3])), generator.null_condition(1)
    keys = [f"3/{i}" for i in range(6)]
    batched = relevance_maps(generator, latents, cond, null, keys, draws=3, batch_size=64)
    separate = relevance_maps(generator, latents, cond, null, keys, draws=3, batch_size=64, batched=False)
    small = relevance_maps(generator, latents, cond, null, keys, draws=3, batch_size=3)
    assert batched.shape == (6, 16, 16)
    assert torch.allclose(batched, separate, atol=1e-5)
    assert torch.allclose(batched, small, atol=1e-5)
    assert not torch.allclose(batched[0], batched[1])  # each image has its own noise


# -- one pass serves all ----------------------------------------------------------------------
def test_cached_reselection_makes_no_model_call_and_matches_a_fresh_run(data, tmp_path):
    generator = tiny_dit(data)
    cached = method(str(tmp_path / "scores"))
    counter = CallCounter(generator)
    first, _ = cached.distill_class(data, 3, 2, 0, generator)
    scoring_calls = counter.calls
    assert scoring_calls > 0 and first.shape == (2, 1, 16, 16)

    again = method(str(tmp_path / "scores"))  # a new run reading the cache
    second_ipc, info = again.distill_class(data, 3, 5, 0, generator)
    assert counter.calls == scoring_calls  # zero model calls for the second ipc
    fresh, fresh_info = method(None).distill_class(data, 3, 5, 0, tiny_dit(data))
    assert torch.equal(second_ipc, fresh) and info == fresh_info
    assert second_ipc.shape == (5, 1, 16, 16)


def test_bf16_and_fp32_scores_are_cached_apart(data, tmp_path):
    """Scoring runs at the run's sample_precision: a bf16 run must not fill an fp32 run's cache."""
    from ddcore.sharding import autocast

    generator, root = tiny_dit(data), tmp_path / "scores"
    with autocast("cpu", "bf16"):  # as the driver runs sample_precision=bf16
        bf16 = method(str(root))
        bf16.distill_class(data, 2, 2, 0, generator)
        bf16_settings = bf16.settings(data, generator)
    fp32 = method(str(root))
    fp32.distill_class(data, 2, 2, 0, generator)
    assert fp32.timings["scored_images"] == 24  # scored again, not read from the bf16 run
    assert len(list(root.iterdir())) == 2
    assert bf16_settings.get("precision") == "bf16" and fp32.settings(data, generator)["precision"] == "fp32"


def test_more_images_per_class_scores_only_the_new_ones(data, tmp_path):
    generator = tiny_dit(data)
    root = str(tmp_path / "scores")
    method(root, images_per_class=12).distill_class(data, 1, 2, 0, generator)
    counter = CallCounter(generator)
    bigger = method(root, images_per_class=24)
    bigger.distill_class(data, 1, 2, 0, generator)
    assert bigger.timings["scored_images"] == 12 and counter.calls > 0


def test_tiled_and_single_patch_images(data, generator, tmp_path):
    tiled, info = method(tile_max_ipc=10).distill_class(data, 0, 3, 0, generator)
    assert tiled.shape == (3, 1, 16, 16)
    sources = [i for group in info["source_index"] for i in group]
    assert len(sources) == 12 and len(set(sources)) == 12  # 4 distinct real images per image
    single, info = method(tile_max_ipc=2).distill_class(data, 0, 3, 0, generator)
    assert single.shape == (3, 1, 16, 16) and all(isinstance(i, int) for i in info["source_index"])
    # the whole digit is the patch (low-res): images are the real images themselves
    real = data.train.load(info["source_index"])
    assert torch.allclose(single, real, atol=1 / 255)


def test_whole_images_are_scored_at_the_generators_resolution(data):
    generator = tiny_dit(data, resolution=8)  # an 8 px model on the 16 px digits
    sides = []
    original = generator.denoise
    generator.denoise = lambda x, *a, **k: sides.append(x.shape[-1]) or original(x, *a, **k)
    sel = method(tile_max_ipc=0)
    images, info = sel.distill_class(data, 4, 3, 0, generator)
    assert sides and set(sides) == {8} and sel.settings(data, generator)["score_size"] == 8
    # the chosen images keep the data's pixels
    assert images.shape == (3, 1, 16, 16)
    assert torch.allclose(images, data.train.load(info["source_index"]), atol=1 / 255)


def test_crop_mode_cuts_the_best_window(data, generator):
    sel = method(crop="true", image_size=16, patch_size=12)
    images, info = sel.distill_class(data, 2, 12, 0, generator)
    assert images.shape == (12, 1, 16, 16)
    for boxes in info["patch_box"]:
        for top, left, size in boxes:
            assert size == 12 and 0 <= top <= 4 and 0 <= left <= 4


# -- sharding and resume ----------------------------------------------------------------------
BASE = {
    "method": "patchsel",
    "dataset": "digits",
    "ipc": 2,
    "seed": 0,
    "generator": "tiny",
    "config": {"method": {"draws": 2}},
}


def pngs(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def test_two_ranks_and_a_resume_give_the_single_process_set(data, generator, tmp_path):
    one = tmp_path / "one"
    distill_to_folder(method(), data, 2, 0, generator, one, BASE, shard=Shard())

    # rank 1 works first (in a thread), then rank 0: concurrent forwards in one process would
    # share its CPU threads and round differently; separate processes or GPUs do not.
    errors = []

    def rank(r):
        try:
            distill_to_folder(
                method(), data, 2, 0, generator, tmp_path / "two", BASE, shard=Shard(r, 2), poll_s=0.05
            )
        except Exception as exc:  # noqa: BLE001  (re-raised in the test's thread)
            errors.append(exc)

    second = threading.Thread(target=rank, args=(1,))
    second.start()
    odd = [tmp_path / "two" / ".done" / f"{c}.json" for c in data.class_ids[1::2]]
    for _ in range(1200):
        if all(p.is_file() for p in odd) or errors:
            break
        time.sleep(0.1)
    rank(0)
    second.join(timeout=120)
    assert not errors and pngs(tmp_path / "two") == pngs(one)

    class Killed(BaseException):
        pass

    class DiesAtClass4(PatchSelection):
        def distill_class(self, data, label, *args):
            if label == 4:
                raise Killed
            return super().distill_class(data, label, *args)

    resumed = tmp_path / "resumed"
    with pytest.raises(Killed):
        distill_to_folder(
            DiesAtClass4(**schema_settings(PatchSelectionSchema, score_cache=False, **SMALL)),
            data,
            2,
            0,
            generator,
            resumed,
            BASE,
            shard=Shard(),
        )
    again = method()
    distill_to_folder(again, data, 2, 0, generator, resumed, BASE, shard=Shard())
    assert pngs(resumed) == pngs(one)
    assert again.timings["scored_images"] == 6 * 24  # classes 4..9 only


# -- both model kinds end to end --------------------------------------------------------------
def test_class_conditional_run_end_to_end(make_cfg):
    from ddapp.tasks import distill_only

    cfg = make_cfg(
        "task=distill",
        "method=patchsel",
        "method.clusters=4",
        "method.top_clusters=2",
        "method.images_per_class=24",
        "ipc=3",
    )
    assert cfg.eval._target_ == "eval.soft_label.SoftLabelProtocol"  # the paper's protocol
    metrics = distill_only(cfg)
    folder = Path(cfg.paths.output_dir) / "distilled"
    distilled = load_distilled(folder, digits())
    assert metrics["distill/images"] == 30 and distilled.images.shape == (30, 1, 16, 16)
    assert any(Path(cfg.paths.cache_dir, "patchsel").rglob("*.pt"))


def text_data(per_class=8, names=True):
    wnids = subset_wnids("imagenette")[:3]
    class_names, _ = wnid_names(wnids)
    torch.manual_seed(0)
    images = torch.randint(0, 256, (3 * per_class, 3, 32, 32), dtype=torch.uint8)
    source = TensorSource(images, torch.arange(3).repeat_interleave(per_class))
    if not names:
        class_names = list(wnids)
    return ImageClassificationData(
        name="tinynette",
        class_ids=list(wnids),
        class_names=class_names,
        resolution=32,
        channels=3,
        train=source,
        test=source,
        prompts=class_names,
    )


@pytest.fixture(scope="module")
def sd_generator(tmp_path_factory):
    from ddcore.generators.stable_diffusion import load_stable_diffusion
    from tests.test_generators_pretrained import save_tiny_sd

    folder = save_tiny_sd(tmp_path_factory.mktemp("sd"))
    return load_stable_diffusion(
        text_data(), **generator_settings("sd15", path=str(folder), resolution=32)
    ), folder


def test_text_conditioned_model_end_to_end(sd_generator, tmp_path):
    generator, _ = sd_generator
    data = text_data()
    text_small = dict(
        draws=2,
        crop="true",
        image_size=32,
        patch_size=24,
        clusters=2,
        top_clusters=1,
        kmeans_backend="torch",
        score_cache_dir=str(tmp_path),
    )
    sel = from_schema(PatchSelectionSchema, **text_small)
    sel.check_generator(generator, data)
    assert sel.conditions(generator, data, 0)[2] == f"text:An image of {data.class_names[0]}|An image of ."
    assert sel.feature_fn(generator, data).layer == "up_blocks.1"
    counter = CallCounter(generator)
    images, info = sel.distill_class(data, 1, 2, 0, generator)
    assert images.shape == (2, 3, 32, 32) and counter.calls > 0
    calls = counter.calls
    again, _ = from_schema(
        PatchSelectionSchema,
        **text_small,
        tile_max_ipc=0,
    ).distill_class(data, 1, 3, 0, generator)
    assert counter.calls == calls and again.shape == (3, 3, 32, 32)


def test_text_conditioned_run_through_the_configs(make_cfg, sd_generator):
    """generator=sd15 from a local folder, as a user would run it (digits names as prompts)."""
    from ddapp.tasks import distill_only

    _, folder = sd_generator
    cfg = make_cfg(
        "task=distill",
        "method=patchsel",
        "generator=sd15",
        f"generator.path={folder}",
        "generator.resolution=16",
        "method.clusters=4",
        "method.top_clusters=2",
        "method.images_per_class=12",
        "method.draws=1",
    )
    metrics = distill_only(cfg)
    distilled = load_distilled(Path(cfg.paths.output_dir) / "distilled", digits())
    assert metrics["distill/images"] == 20 and distilled.images.shape == (20, 1, 16, 16)


# -- bad input --------------------------------------------------------------------------------
def test_bad_input_is_one_clear_error(data, sd_generator):
    with pytest.raises(UserError, match="patch_size=300 is larger than the image"):
        from_schema(PatchSelectionSchema, patch_size=300)
    with pytest.raises(UserError, match=r"clusters=5 \(M\) is smaller than method.top_clusters=10"):
        from_schema(PatchSelectionSchema, clusters=5, top_clusters=10)
    with pytest.raises(UserError, match="method.clip_model"):
        from_schema(PatchSelectionSchema, features="clip")
    with pytest.raises(UserError, match="ipc=50 needs 50 patches per class"):
        from_schema(PatchSelectionSchema, images_per_class=20).validate(data, 50)
    with pytest.raises(UserError, match="dift_layer='nope'"):
        method(dift_layer="nope").check_generator(tiny_dit(data), data)
    generator, _ = sd_generator
    with pytest.raises(UserError, match="needs class names"):
        from_schema(PatchSelectionSchema).check_generator(generator, text_data(names=False))


# -- the relevance sign on a trained model ------------------------------------------------------
def test_trained_tiny_dit_finds_the_digit_more_relevant_than_the_empty_border(make_cfg):
    """relevance = E[L(null) - L(c)]: higher where the class explains the image better.

    The tiny DiT trained on digits (the default dit_tiny, ~90 s on 2 cores, cached for the
    session) must rank the digit above the empty border; the paper's R (the negation) would
    rank them the other way round.
    """
    from ddapp.jobs import build

    cfg = make_cfg("generator.probe_per_class=0", tiny=False)
    data = digits()
    generator = build(cfg.generator, data=data)
    ring = torch.ones(16, 16, dtype=torch.bool)
    ring[2:14, 2:14] = False
    centre = torch.zeros(16, 16, dtype=torch.bool)
    centre[4:12, 4:12] = True
    ink, border, wins = [], [], 0
    for label in range(10):
        images = data.class_images(label)[:10]
        maps = relevance_maps(
            generator,
            generator.encode(images),
            generator.condition(torch.tensor([label])),
            generator.null_condition(1),
            [f"{label}/{i}" for i in range(10)],
            draws=4,
        )
        for image, relevance in zip(images[:, 0], maps):
            empty = (image < 0.05) & ring
            ink.append(relevance[image > 0.3].mean())
            border.append(relevance[empty].mean() if empty.any() else relevance[ring].mean())
            wins += int(relevance[centre].mean() > relevance[ring].mean())
    ink, border = torch.stack(ink), torch.stack(border)
    assert ink.mean() > 0 and ink.mean() > 2 * border.mean()
    assert wins >= 60  # of 100 images, the centre outranks the border ring


def test_clip_features_from_a_local_folder(data, generator, tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=16,
            intermediate_size=32,
            num_attention_heads=2,
            num_hidden_layers=1,
            image_size=16,
            patch_size=8,
            projection_dim=8,
        )
    ).save_pretrained(tmp_path / "clip")
    sel = method(features="clip", clip_model=str(tmp_path / "clip"), tile_max_ipc=0)
    sel.check_generator(generator, data)
    images, _ = sel.distill_class(data, 5, 4, 0, generator)
    assert images.shape == (4, 1, 16, 16)
    features = sel.feature_fn(generator, data)(data.class_images(5)[:3], None, [0, 1, 2])
    assert features.shape == (3, 8)
    with pytest.raises(UserError, match="cannot load a CLIP vision model"):
        from_schema(PatchSelectionSchema, features="clip", clip_model=str(tmp_path / "nothing")).feature_fn(
            generator, data
        )
