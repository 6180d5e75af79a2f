"""Sharded, resumed and cross-class batched distillation give the set an uninterrupted
single process, one class at a time, gives.

A tiny random-weight DiT (no training) and MGD^3 with 4 steps keep each run to seconds.
"""

import json
import threading
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from baselines.real import RandomReal
from ddapp.schemas import (
    D4MSchema,
    ManifoldGDSchema,
    MGD3Schema,
    UnguidedSchema,
    from_schema,
    schema_settings,
)
from ddcore import class_writer
from ddcore.data.small import digits
from ddcore.distilled import load_distilled
from ddcore.errors import UserError
from ddcore.generators.dit import load_dit
from ddcore.method import MethodBase
from ddcore.seeding import rng_for
from ddcore.sharding import Shard, autocast, current_shard, distill_to_folder
from mgd3.distiller import MGD3
from tests.configs import generator_settings

IPC = 2
BASE = {
    "method": "mgd3",
    "dataset": "digits",
    "ipc": IPC,
    "seed": 0,
    "generator": "tiny",
    "config": {"method": {"lam": 0.1, "t_sg": 2, "steps": 4}},
}


class Killed(BaseException):
    """The process dying (not an error a method could catch)."""


def tiny_generator(folder: Path):
    if not (folder / "transformer").is_dir():
        from tests.test_generators_dit import save_tiny_dit

        save_tiny_dit(folder, vae=True)
    return load_dit(
        digits(),
        **generator_settings("dit_xl2", path=str(folder), vae=None, class_space="dataset", resolution=16),
    )


def method():
    return from_schema(MGD3Schema, lam=0.1, t_sg=2, steps=4, kmeans_backend="torch")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dit")
    return digits(), tiny_generator(folder), folder


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory):
    """The set as one uninterrupted process writes it."""
    data, generator, _ = setup
    out = tmp_path_factory.mktemp("one") / "distilled"
    distill_to_folder(method(), data, IPC, 0, generator, out, BASE, shard=Shard())
    return out


def pngs(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.glob("*/*.png"))}


def manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


class Counting(MethodBase):
    """A method that records which classes it was asked for."""

    name = "counting"

    def __init__(self, inner):
        self.inner, self.labels = inner, []

    def distill_class(self, data, label, ipc, seed, generator):
        self.labels.append(label)
        return self.inner.distill_class(data, label, ipc, seed, generator)


def _worker(rank: int, world_size: int, init_file: str, dit_folder: str, out: str, generator=None) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=180),
    )
    try:
        generator = generator or tiny_generator(Path(dit_folder))
        distill_to_folder(method(), digits(), IPC, 0, generator, Path(out), BASE, poll_s=0.2)
    finally:
        dist.destroy_process_group()


def test_one_vs_two_gloo_processes_write_identical_pngs(setup, reference, tmp_path):
    """Rank 1 is a spawned process; this process is rank 0 (one fewer interpreter to start)."""
    _, generator, dit_folder = setup
    out = tmp_path / "two" / "distilled"
    args = (2, str(tmp_path / "init"), str(dit_folder), str(out))
    other = mp.get_context("spawn").Process(target=_worker, args=(1, *args))
    other.start()
    try:
        _worker(0, *args, generator=generator)
    finally:
        other.join(timeout=300)
    assert other.exitcode == 0
    assert pngs(out) == pngs(reference) and len(pngs(out)) == 10 * IPC
    assert manifest(out)["images"] == manifest(reference)["images"]
    ranks = {
        json.loads(p.read_text())["label"]: json.loads(p.read_text())["rank"]
        for p in (out / ".done").glob("*.json")
    }
    assert ranks == {label: label % 2 for label in range(10)}  # the classes were split


def test_killed_mid_class_then_resumed_equals_uninterrupted(setup, reference, tmp_path, monkeypatch):
    data, generator, _ = setup
    out = tmp_path / "distilled"
    save = class_writer.save_png_atomic
    written = []

    def dies_in_class_3(image, path):
        if path.parent.name == "3" and path.name == "000001.png":
            path.with_name(".000001.png.999.tmp").write_bytes(b"\x89PNG half")  # a kill mid-write
            raise Killed  # the process dies after one image of class 3
        save(image, path)
        written.append(path)

    monkeypatch.setattr(class_writer, "save_png_atomic", dies_in_class_3)
    with pytest.raises(Killed):
        distill_to_folder(method(), data, IPC, 0, generator, out, BASE, shard=Shard())
    monkeypatch.setattr(class_writer, "save_png_atomic", save)
    assert (out / "3" / "000000.png").is_file() and not (out / "manifest.json").exists()
    assert class_writer.missing_classes(out, data) == list(range(3, 10))
    before = {p: p.stat().st_mtime_ns for p in (out / "0").glob("*.png")}

    resumed = Counting(method())
    distilled = distill_to_folder(resumed, data, IPC, 0, generator, out, BASE, shard=Shard())
    assert resumed.labels == list(range(3, 10))  # finished classes are not regenerated
    assert {p: p.stat().st_mtime_ns for p in (out / "0").glob("*.png")} == before
    assert pngs(out) == pngs(reference)
    assert manifest(out)["images"] == manifest(reference)["images"]
    assert not list(out.glob("*/.*.tmp"))  # the half-written temp file is gone
    assert distilled.stats["resumed_classes"] == 3 and len(distilled) == 10 * IPC
    assert torch.equal(distilled.images, load_distilled(reference, data).images)


def test_rerun_of_a_finished_folder_generates_nothing(setup, reference, tmp_path):
    data, generator, _ = setup
    again = Counting(method())
    distilled = distill_to_folder(again, data, IPC, 0, generator, reference, BASE, shard=Shard())
    assert again.labels == [] and len(distilled) == 10 * IPC
    assert distilled.info["mode_id"][:IPC] == list(range(IPC))


def test_other_settings_in_the_folder_are_refused(setup, reference):
    data, generator, _ = setup
    other = {**BASE, "config": {"method": {**BASE["config"]["method"], "t_sg": 3}}}
    with pytest.raises(UserError, match="method.t_sg: 2 there, 3 here"):
        distill_to_folder(method(), data, IPC, 0, generator, reference, other, shard=Shard())
    with pytest.raises(UserError, match="precision: 'fp32' there, 'bf16' here"):
        distill_to_folder(
            method(), data, IPC, 0, generator, reference, BASE, shard=Shard(), precision="bf16-mixed"
        )


class Noise(MethodBase):
    """A cheap per-class method: images depend only on (seed, label)."""

    name = "noise"

    def distill_class(self, data, label, ipc, seed, generator):
        images = torch.rand(ipc, 1, 16, 16, generator=rng_for(seed, "noise", label))
        return images, {"mode_id": list(range(ipc))}


def run_ranks(make_method, data, out, world_size):
    """Ranks as threads without a process group: they meet by polling the class markers."""
    errors = []

    def rank(r):
        try:
            distill_to_folder(
                make_method(), data, IPC, 0, None, out, BASE, shard=Shard(r, world_size), poll_s=0.05
            )
        except Exception as exc:  # noqa: BLE001  (re-raised below, in the test's thread)
            errors.append(exc)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors


@pytest.mark.parametrize("make_method", [Noise, RandomReal], ids=["noise", "random_real"])
def test_ranks_meet_on_disk_without_a_process_group(make_method, tmp_path):
    data = digits()
    run_ranks(make_method, data, tmp_path / "one", 1)
    run_ranks(make_method, data, tmp_path / "three", 3)
    assert pngs(tmp_path / "three") == pngs(tmp_path / "one")
    assert manifest(tmp_path / "three")["images"] == manifest(tmp_path / "one")["images"]


def test_shard_comes_from_the_launcher_environment(monkeypatch):
    for key in (
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "SUBMITIT_EXECUTOR",
        "SLURM_PROCID",
        "SLURM_NTASKS",
        "SLURM_LOCALID",
    ):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "4")  # a plain sbatch script: one process, no sharding
    assert current_shard() == Shard()
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")  # submitit's srun: one process per task
    monkeypatch.setenv("SLURM_PROCID", "3")
    assert current_shard() == Shard(3, 4)
    monkeypatch.setenv("RANK", "1")  # torchrun
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert current_shard() == Shard(1, 2, 1)
    assert [c for c in range(5) if current_shard().owns(c)] == [1, 3]


def test_bf16_autocast_only_when_asked():
    assert not isinstance(autocast("cpu", "32-true"), torch.autocast)
    assert not isinstance(autocast("cpu", None), torch.autocast)
    with autocast("cpu", "bf16-mixed"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_fingerprint_records_the_kmeans_backend_that_runs(monkeypatch):
    """kmeans_backend=auto runs faiss-cpu or torch (other modes) by what is installed: a folder
    begun with one is not resumed with the other; how latents are batched does not matter."""
    import ddcore.kmeans as km
    from ddcore.sharding import differences, fingerprint

    data = digits()
    base = {"method": "mgd3", "config": {"method": {"kmeans_backend": "auto", "latent_batch_size": 64}}}
    monkeypatch.setattr(km, "_faiss", lambda: None)
    with_torch = fingerprint(base, data, None)
    monkeypatch.setattr(km, "_faiss", lambda: object())
    with_faiss = fingerprint(base, data, None)
    assert differences(with_faiss, with_torch) == ["kmeans: 'torch' there, 'faiss-cpu' here"]
    other_batch = {
        "method": "mgd3",
        "config": {"method": {"kmeans_backend": "auto", "latent_batch_size": 16}},
    }
    assert fingerprint(other_batch, data, None) == with_faiss


def test_task_distill_resumes_in_its_run_folder(make_cfg):
    """Through the task: a rerun in the same folder redoes only the class that was lost."""
    from ddapp.jobs import build

    cfg = make_cfg("task=distill", "method=random")
    build(cfg.task)(cfg)
    out = Path(cfg.paths.output_dir) / "distilled"
    first, before = pngs(out), (out / "0" / "000000.png").stat().st_mtime_ns
    (out / ".done" / "4.json").unlink()  # class 4 was being rewritten when the run died
    (out / "4" / "000001.png").unlink()
    build(cfg.task)(cfg)
    assert pngs(out) == first and (out / ".done" / "4.json").is_file()
    assert (out / "0" / "000000.png").stat().st_mtime_ns == before


# -- cross-class batches (method.class_batch) ------------------------------------------------
class Grouping(MGD3):
    """MGD^3 with several classes per denoiser batch, recording the groups it was given."""

    def __init__(self, class_batch: int):
        super().__init__(
            **schema_settings(
                MGD3Schema, lam=0.1, t_sg=2, steps=4, kmeans_backend="torch", class_batch=class_batch
            )
        )
        self.groups = []

    def distill_classes(self, data, labels, ipc, seed, generator):
        self.groups.append(list(labels))
        return super().distill_classes(data, labels, ipc, seed, generator)


def test_three_classes_per_batch_write_the_pngs_and_markers_of_one(setup, reference, tmp_path):
    data, generator, _ = setup
    out = tmp_path / "distilled"
    grouped = Grouping(class_batch=3)
    distill_to_folder(grouped, data, IPC, 0, generator, out, BASE, shard=Shard())
    assert grouped.groups == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert pngs(out) == pngs(reference) and len(pngs(out)) == 10 * IPC
    assert manifest(out)["images"] == manifest(reference)["images"]
    fingerprints = lambda folder: [m["fingerprint"] for m in class_writer.read_markers(folder, data).values()]  # noqa: E731
    assert fingerprints(out) == fingerprints(reference)  # class_batch does not enter it


def test_killed_inside_a_cross_class_batch_resumes_class_by_class(setup, reference, tmp_path, monkeypatch):
    data, generator, _ = setup
    out = tmp_path / "distilled"
    save = class_writer.save_png_atomic

    def dies_in_class_4(image, path):
        if path.parent.name == "4":
            raise Killed  # classes 3, 4, 5 were sampled together; only 3 got written
        save(image, path)

    monkeypatch.setattr(class_writer, "save_png_atomic", dies_in_class_4)
    with pytest.raises(Killed):
        distill_to_folder(Grouping(class_batch=3), data, IPC, 0, generator, out, BASE, shard=Shard())
    monkeypatch.setattr(class_writer, "save_png_atomic", save)
    assert class_writer.missing_classes(out, data) == list(range(4, 10))

    resumed = Grouping(class_batch=3)
    distilled = distill_to_folder(resumed, data, IPC, 0, generator, out, BASE, shard=Shard())
    assert resumed.groups == [[4, 5, 6], [7, 8, 9]]  # other groups than the first run's
    assert pngs(out) == pngs(reference)
    assert distilled.stats["resumed_classes"] == 4


@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: from_schema(UnguidedSchema, steps=4, **kw),
        lambda **kw: from_schema(D4MSchema, steps=4, kmeans_backend="torch", latent_cache=False, **kw),
        lambda **kw: from_schema(
            ManifoldGDSchema, steps=4, t_sg=1, kmeans_backend="torch", latent_cache=False, **kw
        ),
    ],
    ids=["unguided", "d4m", "manifoldgd"],
)
def test_cross_class_batches_give_each_class_its_own_images(setup, make):
    """Batches of 3 rows split classes of 2 samples (rows 0-2: class 0 and half of class 1), so
    each class's guidance, start latents and random generators are cut and rejoined. With one
    thread the images are bit-identical here; with two, MKL may round a forward of 6 rows
    differently from one of 4 (measured: at most 2.4e-7). A sample given another's noise,
    guidance or start latent differs by far more than the tolerance."""
    data, generator, _ = setup
    alone = make(batch_size=3)
    together = make(batch_size=3, class_batch=3).distill_classes(data, [0, 7, 3], IPC, 0, generator)
    for label, (images, info) in zip([0, 7, 3], together):
        own, own_info = alone.distill_class(data, label, IPC, 0, generator)
        torch.testing.assert_close(images, own, rtol=0, atol=1e-6)
        assert info.keys() == own_info.keys()


def test_bad_class_batch_is_one_line(make_cfg):
    from ddapp.config_checks import check_config

    with pytest.raises(UserError, match=r"method.class_batch must be >= 1"):
        check_config(make_cfg("method=mgd3", "method.class_batch=0"))
    with pytest.raises(UserError, match=r"method.class_batch must be an integer >= 1"):
        from_schema(UnguidedSchema, class_batch=0)
