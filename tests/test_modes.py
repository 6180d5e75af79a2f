"""Mode discovery options, DBSCAN means, the faiss fallback, and the on-disk latent cache."""

import pytest
import torch

import ddcore.kmeans as km
from ddapp.jobs import build
from ddapp.stages import prepare_distillation
from ddcore.data.small import digits
from ddcore.errors import UserError
from ddcore.kmeans import closest_points, dbscan_means, kmeans
from ddcore.latent_cache import LatentCache, cache_key
from mgd3.modes import MODE_DISCOVERY, ModeDiscovery
from tests.configs import generator_settings
from tests.distill import distill_set


def rows_of(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether every row of a (flattened) is a row of b."""
    a, b = a.flatten(1), b.flatten(1)
    return bool(torch.isclose(a[:, None], b[None], atol=1e-5).all(dim=-1).any(dim=1).all())


def blobs(k=4, per=25, seed=0):
    """k well-separated clusters of 'latents' (n, 2, 2, 2); returns points and centres."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, 8, generator=g) * 10
    points = centres.repeat_interleave(per, 0) + torch.randn(k * per, 8, generator=g) * 0.1
    return points.view(-1, 2, 2, 2), centres


@pytest.mark.parametrize("method", MODE_DISCOVERY)
def test_each_option_finds_one_mode_per_cluster(method):
    latents, centres = blobs()
    modes = ModeDiscovery(method, backend="torch")(latents, 4, seed=0)
    assert modes.shape == (4, 2, 2, 2)
    flat = modes.flatten(1)
    if method in ("closest_real", "random_real"):  # modes are real latents
        assert rows_of(modes, latents)
    if method != "random_real":  # one mode near each centre
        nearest = torch.cdist(flat, centres)
        assert nearest.min(dim=1).values.max() < 1.0
        assert sorted(nearest.argmin(dim=1).tolist()) == [0, 1, 2, 3]


def test_dbscan_tops_up_with_kmeans_when_it_finds_fewer_clusters_than_k():
    latents, centres = blobs(k=2, per=40)
    modes = dbscan_means(latents.flatten(1), 5, seed=0, backend="torch")
    assert modes.shape == (5, 8)
    # the two DBSCAN clusters come first, as means of (most of) each blob
    assert torch.cdist(modes[:2], centres).argmin(dim=1).tolist() == [0, 1]
    assert torch.cdist(modes[:2], centres).min(dim=1).values.max() < 0.1
    assert torch.isfinite(modes).all() and len(torch.unique(modes, dim=0)) == 5


def test_closest_points_are_distinct_even_when_centroids_share_a_nearest_point():
    x = torch.tensor([[0.0], [1.0], [5.0]])
    centroids = torch.tensor([[0.1], [0.2]])
    assert sorted(closest_points(x, centroids).tolist()) == [0, 1]


def test_kmeans_falls_back_to_torch_when_faiss_is_missing(monkeypatch):
    latents, centres = blobs()
    monkeypatch.setattr(km, "_faiss", lambda: None)
    found, _ = kmeans(latents.flatten(1), 4, seed=0)  # backend auto
    torch_found, _ = kmeans(latents.flatten(1), 4, seed=0, backend="torch")
    assert torch.equal(found, torch_found)
    with pytest.raises(ImportError, match="faiss is not installed"):
        kmeans(latents.flatten(1), 4, seed=0, backend="faiss")


def test_unknown_mode_discovery_is_a_one_line_error(make_cfg):
    cfg = make_cfg("method=mgd3", "method.mode_discovery=meanshift")
    with pytest.raises(UserError, match="unknown method.mode_discovery 'meanshift'") as err:
        build(cfg.method)
    assert "closest_real" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("option", MODE_DISCOVERY)
def test_mgd3_runs_with_each_mode_discovery_and_returns_its_modes(make_cfg, option):
    cfg = make_cfg("method=mgd3", "method.steps=4", "method.t_sg=1", f"method.mode_discovery={option}")
    data, method, generator = prepare_distillation(cfg)
    out = distill_set(method, data, cfg.ipc, cfg.seed, generator)
    assert out.images.shape == (20, 1, 16, 16)
    modes = out.stats["modes"]  # saved with the run
    assert sorted(modes) == list(range(10)) and modes[0].shape == (2, 1, 16, 16)
    if option in ("closest_real", "random_real"):
        real = generator.encode(data.class_images(0)).cpu()
        assert rows_of(modes[0], real)


class CountingEncoder:
    """Wraps a generator's encode to count the images it encodes."""

    def __init__(self, generator):
        self.generator, self.calls = generator, 0
        self.encode = generator.encode

    def __call__(self, images, *args):
        self.calls += 1
        return self.encode(images, *args)


def test_latent_cache_encodes_once_and_is_keyed_by_dataset_and_encoder(make_cfg, tmp_path):
    cfg = make_cfg("method=mgd3")
    data, _, generator = prepare_distillation(cfg)
    counter = CountingEncoder(generator)
    generator.encode = counter
    cache = LatentCache(tmp_path / "latents")
    first = cache.class_latents(generator, data, 4)
    calls = counter.calls  # one per batch of ENCODE_BATCH images
    again = LatentCache(tmp_path / "latents").class_latents(generator, data, 4)
    assert calls > 0 and counter.calls == calls and torch.equal(first, again)
    assert torch.equal(first.cpu(), counter.encode(data.class_images(4)).cpu())
    files = list((tmp_path / "latents").rglob("*"))
    # one file per class, named by the class's content digest; no temp files left behind
    assert [p.name for p in files if p.is_file()] == [f"4-{data.class_digest(4)[:16]}.pt"]

    other_data = digits(resolution=16, test_fraction=0.3)  # another split: other latents
    assert other_data.class_digest(4) != data.class_digest(4)
    key = cache_key(data, generator)
    generator.name = "another_generator"
    assert cache_key(data, generator) != key


def test_class_digest_of_an_image_folder_follows_rewritten_files(tmp_path):
    """Images rewritten in place (same names and count) give another digest: no stale latents."""
    import os

    from PIL import Image

    from ddcore.data.base import FileSource

    paths = [tmp_path / f"{i}.png" for i in range(3)]
    for i, path in enumerate(paths):
        Image.new("L", (8, 8), color=i * 40).save(path)
    source = FileSource(paths, [0, 0, 0], resolution=8, channels=1)
    before = source.digest([0, 1, 2])
    Image.new("L", (8, 8), color=255).save(paths[1])
    os.utime(paths[1], ns=(1, 10**18))  # a new mtime even on coarse clocks
    assert source.digest([0, 1, 2]) != before and source.digest([0]) == FileSource(
        paths, [0, 0, 0], 8, 1
    ).digest([0])


def test_latent_cache_key_follows_the_encoder_weights():
    from ddcore.generators.base import VAECodec

    class FakeVAE(torch.nn.Module):
        def __init__(self, seed):
            super().__init__()
            torch.manual_seed(seed)
            self.conv = torch.nn.Conv2d(3, 4, 1)
            self.config = type(
                "Config", (), {"scaling_factor": 0.18215, "block_out_channels": [1, 1], "latent_channels": 4}
            )

    class FakeGenerator:
        name, resolution, latent_shape, dtype = "fake", 32, (4, 16, 16), torch.float32

        def __init__(self, seed):
            self.codec = VAECodec(FakeVAE(seed))

    data = digits()
    assert cache_key(data, FakeGenerator(0)) == cache_key(data, FakeGenerator(0))
    assert cache_key(data, FakeGenerator(0)) != cache_key(data, FakeGenerator(1))


def test_latents_decoded_by_dataloader_workers_equal_the_one_process_loop(tmp_path):
    from PIL import Image

    from ddcore.data.base import FileSource, ImageClassificationData
    from ddcore.generators.base import ClassConditionalGenerator, PixelIdentityCodec
    from ddcore.latent_cache import encode_class
    from experiments.bench_decode import Identity

    paths = []
    for i in range(5):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (12, 9), color=(i * 50, 10, 200)).save(paths[-1])
    source = FileSource(paths, [0] * 5, resolution=8, channels=3)
    data = ImageClassificationData("f", ["a"], ["a"], 8, 3, source, source)
    gen = ClassConditionalGenerator(
        Identity(), PixelIdentityCodec(), {}, resolution=8, image_channels=3, model_classes=1, null_label=1
    )
    one = encode_class(gen, data, 0, batch_size=2, workers=0)
    assert one.shape == (5, 3, 8, 8)
    assert torch.equal(one, encode_class(gen, data, 0, batch_size=2, workers=1))


class LargestRequest:
    """An in-memory source that records the most images one ``load`` call asked for."""

    def __init__(self, source):
        self.source, self.labels, self.largest = source, source.labels, 0

    def __len__(self):
        return len(self.source)

    def load(self, indices, resolution=None):
        self.largest = max(self.largest, len(indices))
        return self.source.load(indices, resolution)

    def digest(self, indices):
        return self.source.digest(indices)


@pytest.fixture(scope="module")
def vae_generator(tmp_path_factory):
    """A tiny DiT with a real (random) AutoencoderKL: 16 px images -> (4, 8, 8) latents."""
    from ddcore.generators.dit import load_dit
    from tests.test_generators_dit import save_tiny_dit

    folder = save_tiny_dit(tmp_path_factory.mktemp("vae_dit") / "dit", num_classes=10, vae=True)
    return load_dit(
        digits(),
        **generator_settings("dit_xl2", path=str(folder), vae=None, resolution=16, class_space="dataset"),
    )


def test_a_class_is_decoded_and_encoded_a_batch_at_a_time(vae_generator, make_cfg):
    from ddcore.data.base import ImageClassificationData
    from ddcore.latent_cache import ENCODE_BATCH, encode_class

    base = digits()
    source = LargestRequest(base.train)
    data = ImageClassificationData("d", base.class_ids, base.class_names, 8, 1, source, base.test)
    n = len(data.class_indices(3))
    streamed = encode_class(vae_generator, data, 3, batch_size=4)
    assert n > 100 and source.largest <= 4  # never the whole class in pixels at once
    whole = vae_generator.encode(base.train.load(data.class_indices(3).tolist(), 16), batch_size=n)
    assert streamed.shape == (n, 4, 8, 8) and torch.allclose(streamed, whole, atol=1e-5)
    # the configs' default bounds a VAE call, whatever the class size
    assert build(make_cfg("method=mgd3").method).cache.batch_size == ENCODE_BATCH == 16


def test_latents_are_encoded_in_fp32_under_bf16_sampling_and_keyed_by_it(vae_generator, tmp_path):
    import copy

    from ddcore.latent_cache import encode_class, generator_identity
    from ddcore.sharding import autocast

    data = digits()
    fp32 = encode_class(vae_generator, data, 2)
    key = cache_key(data, vae_generator)
    with autocast("cpu", "bf16"):  # what the driver wraps distillation in for sample_precision=bf16
        under_bf16 = LatentCache(tmp_path).class_latents(vae_generator, data, 2)
        assert cache_key(data, vae_generator) == key
    assert torch.equal(under_bf16, fp32)  # the same latents, so sharing the cache entry is right
    assert generator_identity(vae_generator)["encode_precision"] == "float32"
    assert cache_key(data, copy.deepcopy(vae_generator).to(torch.bfloat16)) != key
