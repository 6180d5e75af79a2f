"""Sharded, resumable distillation: classes dealt across processes, each class written when done.

Process ``rank`` of ``world_size`` distils the classes with ``label % world_size == rank``.
Every class draws from its own seeded generator (``ddcore.seeding.rng_for(seed, ..., label)``),
so the images do not depend on how many processes share the work, or in what order they run.
Each class is one call of the method's ``distill_class`` (the interface in ``ddcore/method.py``),
or, with ``method.class_batch`` N > 1, N classes share one ``distill_classes`` call; each class is
still written and marked on its own, so a run killed inside a group resumes class by class.
A rerun in the same folder skips the classes whose markers exist (``ddcore.class_writer``).
Once every class is on disk, rank 0 writes ``manifest.json``.

The rank comes from an initialized ``torch.distributed`` group, or from the launcher's
environment (``ddcore.distributed``); all ranks write to one run folder (the time-stamped default
is stamped with rank 0's clock). The wait for the other ranks polls their class markers on the
shared disk, not a collective, and inside a task it is bounded: a rank silent for
``cluster.timeout_s`` stops the others with one line naming its missing classes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path

import torch

from ddcore import folder_lock
from ddcore.class_writer import (
    MANIFEST,
    missing_classes,
    read_marker,
    read_markers,
    write_class,
    write_manifest,
    write_modes,
)
from ddcore.data.base import ImageClassificationData
from ddcore.distilled import DistilledSet, load_complete
from ddcore.distributed import Shard, bind_device, current_shard, wait_for  # noqa: F401  (re-exported)
from ddcore.errors import UserError
from ddcore.interrupts import raise_pending
from ddcore.method import class_groups, distill_group

log = logging.getLogger(__name__)


# -- precision --------------------------------------------------------------------------------
BF16 = ("bf16", "bf16-mixed", "bf16-true", "bfloat16")


def precision_name(precision: str | None) -> str:
    """``bf16`` for the bf16 spellings, else ``fp32`` (``None``, ``32``, ``32-true``...)."""
    return "bf16" if str(precision).lower() in BF16 else "fp32"


def autocast(device: torch.device | str, precision: str | None):
    """bf16 autocast for sampling when ``precision`` asks for it (on CUDA, or on CPU if asked
    there); a no-op for fp32 (``None``, ``32``, ``32-true``...). Images differ from fp32 ones.
    Encoding real images for the latent cache opts out (``full_precision``)."""
    if precision_name(precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def full_precision(device: torch.device | str):
    """Autocast off on ``device``'s type: the code inside computes in its weights' dtype."""
    return torch.autocast(torch.device(device).type, enabled=False)


def active_precision(device: torch.device | str) -> str:
    """The precision autocast applies on ``device``'s type right now: ``bf16``, ``fp16`` or
    ``fp32`` (none); cache keys of results computed under it record this."""
    kind = torch.device(device).type
    if not torch.is_autocast_enabled(kind):
        return "fp32"
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(torch.get_autocast_dtype(kind), "fp32")


def model_device(generator) -> torch.device:
    params = next(iter(generator.parameters()), None) if generator is not None else None
    return params.device if params is not None else torch.device("cpu")


# Settings that say where things are kept or how work is grouped, not what the images are: a
# resume that changes only these continues the folder (the generator's weights are compared by
# digest, not by path). class_batch (classes per denoiser batch) gives the same images
# (tests/test_sharding.py), so a run may resume with another; latent_batch_size and
# latent_workers only set the pieces real latents are encoded in (the latent cache shares them).
NOT_SHAPING = frozenset(
    {
        "class_batch",
        "latent_batch_size",
        "latent_workers",
        "cache_dir",
        "latent_cache",
        "latent_cache_dir",
        "score_cache",
        "score_cache_dir",
        "retrain",
        "trainer_kwargs",
        "path",
        "vae",
    }
)


def shaping(config: dict | None) -> dict | None:
    """``config`` without the keys that do not shape images (cache folders, paths)."""
    if not isinstance(config, dict):
        return config
    return {k: v for k, v in config.items() if k not in NOT_SHAPING}


def fingerprint(
    manifest_base: dict,
    data: ImageClassificationData,
    precision: str | None,
    generator=None,
    uses_generator: bool = False,
) -> dict:
    """What must match for a resumed run to continue a folder: the settings that shape images.

    The method's settings; the generator's whole config and a digest of its weights (when the
    method uses one); the data's identity (root, classes, content digest of the train images);
    the precision; for methods with a ``kmeans_backend`` setting, the k-means backend it
    resolves to here (``auto`` runs faiss-cpu or torch, whose modes differ, depending on
    whether faiss is installed). Cache folders and model paths are left out (``NOT_SHAPING``).
    ``uses_generator`` without a ``generator``: the config part only (checks before loading).
    """
    from ddcore.data.identity import data_identity
    from ddcore.kmeans import kmeans_backend
    from ddcore.latent_cache import state_dict_hash

    config = manifest_base.get("config") or {}
    method_config = config.get("method")
    stamp = {k: manifest_base.get(k) for k in ("method", "dataset", "ipc", "seed", "generator")}
    stamp.update(
        method_config=shaping(method_config),
        resolution=data.resolution,
        precision=precision_name(precision),
        data=data_identity(data),
    )
    if isinstance(method_config, dict) and "kmeans_backend" in method_config:
        stamp["kmeans"] = kmeans_backend(method_config["kmeans_backend"])
    if generator is not None or uses_generator:
        stamp["generator_config"] = shaping(config.get("generator"))
    if generator is not None:
        stamp["generator_weights"] = state_dict_hash(generator)
    return json.loads(json.dumps(stamp, default=str))  # compared with markers read from JSON


# -- the driver -------------------------------------------------------------------------------
def distill_to_folder(
    method,
    data: ImageClassificationData,
    ipc: int,
    seed: int,
    generator,
    out_dir: Path,
    manifest_base: dict,
    shard: Shard | None = None,
    precision: str | None = None,
    poll_s: float = 5.0,
) -> DistilledSet:
    """Distil this process's missing classes into ``out_dir``, wait for the other ranks, and
    return the whole set as written (images read back from the PNGs, on every rank)."""
    out_dir, shard = Path(out_dir), shard or current_shard()
    start = time.perf_counter()
    stamp = fingerprint(manifest_base, data, precision, generator)
    with folder_lock.writing(out_dir, stamp, differences):  # other settings: refused at once
        check_same_settings(out_dir, data, stamp)
        return _distill_locked(
            method, data, ipc, seed, generator, out_dir, manifest_base, shard, precision, poll_s, stamp, start
        )


def _distill_locked(
    method, data, ipc, seed, generator, out_dir, manifest_base, shard, precision, poll_s, stamp, start
) -> DistilledSet:
    todo = missing_classes(out_dir, data, stamp)
    if len(todo) < data.num_classes:
        log.info(
            f"resuming {out_dir}: {data.num_classes - len(todo)} of {data.num_classes} "
            "classes already complete"
        )
    mine = [label for label in todo if shard.owns(label)]
    device = model_device(generator)
    done = 0
    for group in class_groups(method, mine):  # method.class_batch classes per call (default 1)
        tic = time.perf_counter()
        with autocast(device, precision):
            results = distill_group(method, data, group, ipc, seed, generator)
        seconds = (time.perf_counter() - tic) / len(group)  # a shared call's time, split evenly
        for label, (images, info) in zip(group, results):  # each class written and marked alone
            write_result(
                out_dir,
                data,
                label,
                images,
                info,
                {"fingerprint": stamp, "seconds": round(seconds, 3), "rank": shard.rank},
            )
            done += 1
            raise_pending()  # a signal a finaliser swallowed: stop after the class just written
            log.info(
                f"{method.name}: class {data.class_ids[label]} "
                f"({done}/{len(mine)} of rank {shard.rank}/{shard.world_size}) in {seconds:.1f}s"
            )
    wait_for_classes(out_dir, data, stamp, shard, poll_s)
    if shard.is_main and (todo or not (out_dir / MANIFEST).is_file()):  # a finished folder stays
        write_manifest(out_dir, data, manifest_base)
    distilled = load_complete(out_dir, data)
    markers = read_markers(out_dir, data).values()
    distilled.stats = {
        "seconds": sum(m.get("seconds", 0.0) for m in markers),  # all ranks, runs
        "wall_seconds": time.perf_counter() - start,
        "resumed_classes": data.num_classes - len(todo),
    }
    return distilled


def write_result(
    out_dir: Path, data: ImageClassificationData, label: int, images: torch.Tensor, info: dict, marker: dict
) -> None:
    """One class's images, manifest info and modes, then its marker (``ddcore.class_writer``)."""
    info = dict(info)
    modes = info.pop("modes", None)
    if modes is not None:  # before the marker: a complete class has its modes
        write_modes(out_dir, data, label, modes)
    write_class(out_dir, data, label, images.float().cpu(), info, marker)


# What is only known once the generator is loaded (its name is in generator_config too)
AFTER_LOADING = ("generator_weights", "generator")


def check_before_loading(
    out_dir: Path,
    data: ImageClassificationData,
    manifest_base: dict,
    precision: str | None,
    uses_generator: bool,
) -> None:
    """Refuse at once, before a generator is loaded or trained, a folder that another process
    writes, or finished classes fill, with other settings (all but the weights' digest)."""
    stamp = fingerprint(manifest_base, data, precision, uses_generator=uses_generator)
    held = folder_lock.other_writer(out_dir)
    if held is not None:
        changes = differences(stamp, held.get("settings") or {}, ignore=AFTER_LOADING)
        if changes:
            raise folder_lock.busy_error(out_dir, held, changes)
    check_same_settings(out_dir, data, stamp, ignore=AFTER_LOADING)


def check_same_settings(
    out_dir: Path, data: ImageClassificationData, stamp: dict, ignore: tuple[str, ...] = ()
) -> None:
    """Refuse to continue a folder that complete classes of other settings already fill."""
    for marker in read_markers(out_dir, data).values():
        changes = differences(stamp, marker.get("fingerprint") or {}, ignore)
        if changes:
            raise UserError(
                f"{out_dir} holds classes made with other settings "
                f"({'; '.join(changes[:3])}): rerun with the folder's settings to "
                "resume, or use a new run folder (hydra.run.dir=...)"
            )


SECTION_NAMES = {"method_config": "method", "generator_config": "generator"}


def differences(ours: dict, theirs: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """``key: <folder's value> there, <ours> here`` per differing setting (method.* one deeper)."""
    lines = []
    for key in sorted((set(ours) | set(theirs)) - set(ignore)):
        a, b, name = ours.get(key), theirs.get(key), SECTION_NAMES.get(key, key)
        if isinstance(a, dict) and isinstance(b, dict):
            lines += [
                f"{name}.{k}: {b.get(k)!r} there, {a.get(k)!r} here"
                for k in sorted(set(a) | set(b))
                if a.get(k) != b.get(k)
            ]
        elif a != b:
            lines.append(f"{name}: {b!r} there, {a!r} here")
    return lines


def wait_for_classes(
    out_dir: Path,
    data: ImageClassificationData,
    stamp: dict,
    shard: Shard,
    poll_s: float = 5.0,
    report_s: float = 300.0,
) -> None:
    """Block until every class is complete on disk (the other ranks' share included); bounded
    inside a task (``ddcore.distributed.wait_for``).

    Each poll reads only the markers still missing, so it stays cheap for 1000 classes.
    """
    pending = missing_classes(out_dir, data, stamp)
    if pending and shard.world_size == 1:
        raise RuntimeError(f"{out_dir}: classes {pending[:5]} were not written")

    def still_missing() -> list[int]:
        pending[:] = [c for c in pending if not is_complete(out_dir, data.class_ids[c], stamp)]
        return pending

    wait_for(
        still_missing,
        owner=lambda label: label % shard.world_size,
        what="classes",
        name=lambda label: data.class_ids[label],
        poll_s=poll_s,
        report_s=report_s,
        log=log,
    )


def is_complete(out_dir: Path, class_id: str, stamp: dict) -> bool:
    marker = read_marker(out_dir, class_id)
    return marker is not None and marker.get("fingerprint") == stamp
