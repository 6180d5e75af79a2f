"""Every setting a job reads, checked before any work: one UserError naming the first problem.

Hydra's typed schemas (``ddapp/schemas.py``) already refuse misspelt method keys and values of
the wrong type when the config is composed. This pass adds what a schema cannot say: ranges
(``eval.epochs >= 1``, ``method.cfg_scale >= 0``), choices (``report.space``,
``sample_precision``), finite numbers (``method.lam=nan``), mandatory values left at ``???``,
and whether the cache folder can be written. Method-specific checks that need the data (``ipc``
against class sizes, ``t_sg <= steps``) stay in the methods' constructors and ``validate``.

A rule is keyed by a config path; ``method.<key>`` rules apply to whichever method has the key.
"""

from __future__ import annotations

import errno
import math
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ddcore.errors import UserError
from ddcore.files import real_name

Check = Callable[[object], str | None]  # value -> what is wrong with it, or None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def integer(low: int | None = None, null: bool = False) -> Check:
    want = (f">= {low}" if low is not None else "an integer") + (" or null" if null else "")
    want += " (an integer)" if low is not None else ""

    def check(value):
        if value is None and null:
            return None
        if not _is_int(value) or (low is not None and value < low):
            return f"must be {want}"
        return None

    return check


def number(
    low: float | None = None,
    high: float | None = None,
    above: bool = False,
    null: bool = False,
    below: bool = False,
) -> Check:
    """A finite number in [low, high] (``above``: strictly greater than ``low``; ``below``:
    strictly less than ``high``)."""
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if above else '>='} {low}")
    if high is not None:
        bounds.append(f"{'<' if below else '<='} {high}")
    want = (" and ".join(bounds) + " (a finite number)" if bounds else "a finite number") + (
        " or null" if null else ""
    )

    def check(value):
        if value is None and null:
            return None
        if not _is_number(value) or not math.isfinite(value):
            return f"must be {want}"
        if low is not None and (value <= low if above else value < low):
            return f"must be {want}"
        if high is not None and (value >= high if below else value > high):
            return f"must be {want}"
        return None

    return check


def choice(*options, null: bool = False) -> Check:
    def check(value):
        if value is None and null:
            return None
        if str(value) not in {str(o) for o in options} or isinstance(value, (dict, list)):
            return f"must be one of: {', '.join(str(o) for o in options)}"
        return None

    return check


def numbers(low: float, high: float, length: int | None = None, below: bool = False) -> Check:
    """A list of finite numbers in [low, high] (of ``length`` items when given; ``below``: each
    strictly less than ``high``)."""
    item = number(low, high, below=below)

    def check(value):
        if (
            not isinstance(value, (list, tuple))
            or (length and len(value) != length)
            or any(item(v) for v in value)
        ):
            size = f"{length} " if length else ""
            return f"must be a list of {size}finite numbers in [{low}, {high}{')' if below else ']'}"
        return None

    return check


def area_range(value) -> str | None:
    """A crop's [low, high] share of the image area, 0 < low <= high <= 1 (RandomResizedCrop)."""
    ok = (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(_is_number(v) and math.isfinite(v) for v in value)
        and 0 < value[0] <= value[1] <= 1
    )
    return None if ok else "must be [low, high] with 0 < low <= high <= 1"


def boolean(value) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def auto_or_integer(low: int) -> Check:
    """``auto`` or an integer >= low (method=rded's factor, method=sre2l's iterations and jitter;
    strings in the schema)."""

    def check(value) -> str | None:
        text = str(value).strip().lower()
        ok = text == "auto" or (text.isdigit() and int(text) >= low)
        return None if ok else f"must be auto or an integer >= {low}"

    return check


PRECISIONS = ("fp32", "32", "32-true", "bf16", "bf16-mixed", "bf16-true", "bfloat16")
TRAINER_PRECISIONS = (
    "32",
    "32-true",
    "16",
    "16-mixed",
    "16-true",
    "bf16",
    "bf16-mixed",
    "bf16-true",
    "64",
    "64-true",
)
FLIP = ("auto", "true", "false", "True", "False")

RULES: dict[str, Check] = {  # (ipc: ddapp.stages.check_ipc, the same moment)
    "seed": integer(0),
    "score_on": choice("test", "validation"),
    "validation.fraction": number(0, 1, above=True),
    "validation.seed": integer(0),
    "sample_precision": choice(*PRECISIONS),
    # report (ddapp/result_logging.py)
    "report.space": choice("pixels", "latents", "tsne"),
    "report.tsne_input": choice("pixels", "latents"),
    "report.tsne_classes": integer(0),
    "report.k": integer(1),
    "report.max_real": integer(1, null=True),
    "report.workers": integer(0),
    # evaluation protocols (eval/hard_label.py, eval/soft_label.py)
    "eval.epochs": integer(1, null=True),  # null: by ipc (0 used to mean that, silently)
    "eval.evals": integer(1),
    "eval.repeats": integer(1),
    "eval.lr": number(0, above=True),
    "eval.momentum": number(0, 1),
    "eval.weight_decay": number(0),
    "eval.batch_size": integer(1, null=True),
    "eval.milestones": numbers(0, 1),
    "eval.gamma": number(0, above=True),
    "eval.temperature": number(0, above=True),
    "eval.schedule": choice("rded_cosine", "cosine"),
    "eval.betas": numbers(0, 1, length=2),
    "eval.cutmix": number(0),
    "eval.test_batch_size": integer(1),
    "eval.num_workers": integer(0),
    "eval.max_bank_gb": number(0),
    "eval.augment.scale": numbers(0, 1, length=2),
    "eval.augment.flip": choice(*FLIP),
    "eval.augment.color_jitter": numbers(0, 10),
    "eval.augment.lighting": number(0),
    "eval.augment.shuffle_factor": integer(1),
    "eval.reference.enabled": boolean,
    "eval.reference.acc": choice("best", "final"),
    "eval.reference.w": number(0, 1),
    "eval.reference.full_epochs": integer(1, null=True),
    "eval.reference.full_repeats": integer(1),
    "eval.reference.full_seed": integer(0, null=True),
    "eval.checkpoint_every": integer(0),
    "cluster.timeout_s": number(0, above=True, null=True),
    "tf32": boolean,
    "eval.student.width": integer(1, null=True),
    "eval.student.depth": integer(1, null=True),
    "eval.teacher.train.epochs": integer(1),
    "eval.teacher.train.evals": integer(1),
    "eval.teacher.train.batch_size": integer(1),
    "eval.teacher.train.lr": number(0, above=True),
    # hardware (conf/trainer)
    "trainer.accelerator": choice("cpu", "gpu", "cuda", "mps", "auto"),
    "trainer.precision": choice(*TRAINER_PRECISIONS),
    # generators (conf/generator): CFG scale 0 = unconditional, 1 = conditional, > 1 = guided
    "generator.cfg_scale": number(0),
    "generator.resolution": integer(1),
    "generator.dtype": choice("float32", "bfloat16", "float16"),
    "generator.retrain": boolean,
    # methods (conf/method + ddapp/schemas.py); applied when the method has the key
    "method.steps": integer(1),
    "method.cfg_scale": number(0, null=True),
    "method.batch_size": integer(1, null=True),
    "method.class_batch": integer(1),
    "method.lam": number(0),
    "method.t_sg": integer(0),
    "method.strength": number(0, 1, above=True),
    "method.kmeans_backend": choice("auto", "faiss", "torch"),
    "method.dbscan_eps": number(0, above=True, null=True),
    "method.dbscan_min_samples": integer(1),
    "method.space": choice("pixels", "latents"),
    "method.feature_resolution": integer(1, null=True),
    "method.draws": integer(1),
    "method.t_min": number(0, 1),
    "method.t_max": number(0, 1),
    "method.image_size": integer(1),
    "method.patch_size": integer(1),
    "method.low_res_max": integer(0),
    "method.dift_t": integer(0),
    "method.clusters": integer(1),
    "method.top_clusters": integer(1),
    "method.tile_max_ipc": integer(0),
    "method.images_per_class": integer(1, null=True),
    "method.score_seed": integer(0),
    "method.lambda_r": number(0),  # minimax
    "method.lambda_d": number(0),
    "method.memory_size": integer(1),
    "method.chunk_classes": integer(1),
    "method.finetune.epochs": integer(1, null=True),
    "method.finetune.steps": integer(1, null=True),
    "method.finetune.batch_size": integer(1),
    "method.finetune.lr": number(0, above=True),
    "method.finetune.ema_decay": number(0, 0.9999999),
    "method.finetune.label_dropout": number(0, 1),
    "method.finetune.flip": choice(*FLIP),
    "method.finetune.max_minutes": number(0, above=True, null=True),
    "method.finetune.checkpoint_every": integer(1),
    "method.mipc": integer(1),  # rded
    "method.num_crop": integer(1),
    "method.factor": auto_or_integer(1),
    "method.scale": area_range,
    "method.observer_space": choice("imagenet1k", "dataset"),
    "method.iterations": auto_or_integer(1),  # sre2l
    "method.jitter": auto_or_integer(0),
    "method.lr": number(0, above=True),
    "method.betas": numbers(0, 1, length=2, below=True),
    "method.r_bn": number(0),
    "method.first_bn_multiplier": number(0),
}
SECTIONS = ("method", "eval", "report", "generator", "trainer")  # every number in them is finite


def check_config(cfg: DictConfig) -> None:
    """Raise a one-line UserError for the first bad setting of a composed job config."""
    check_mandatory(cfg)
    plain = resolved(cfg)
    for path, check in RULES.items():
        found, value = lookup(plain, path)
        problem = check(value) if found else None
        if problem:
            key = source_key(cfg, path)  # the setting the user gave, not one interpolating it
            raise UserError(f"{key} {problem}, got {value!r} (set {key}=<value>)")
    for section in SECTIONS:
        for path, value in leaves(plain.get(section), section):
            if _is_number(value) and not math.isfinite(value):
                raise UserError(f"{path} must be a finite number, got {value!r} (set {path}=<value>)")
    check_writable(
        plain.get("paths", {}).get("cache_dir"),
        "paths.cache_dir",
        "set paths.cache_dir or DD_CACHE_DIR to a writable folder",
    )


def source_key(cfg: DictConfig, path: str) -> str:
    """The key whose value ``path`` takes: ``dataset.resolution`` for ``generator.resolution:
    ${dataset.resolution}`` (followed through chains of plain interpolations), else ``path``."""
    raw = OmegaConf.to_container(job_config(cfg), resolve=False)
    for _ in range(10):
        _, value = lookup(raw, path)
        source = re.fullmatch(r"\$\{([A-Za-z_][\w.]*)\}", value) if isinstance(value, str) else None
        if source is None or not lookup(raw, source.group(1))[0]:
            return path
        path = source.group(1)
    return path


def job_config(cfg: DictConfig) -> DictConfig:
    """The job's config without the ``hydra`` node (present when tests compose with it)."""
    return OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"])


def check_mandatory(cfg: DictConfig) -> None:
    missing = sorted(OmegaConf.missing_keys(job_config(cfg)))
    if missing:
        key = missing[0]
        raise UserError(
            f"{key} is not set and has no default (add {key}=<value> to the command"
            f"{'' if key != 'dataset.root' else ', e.g. dataset.root=/data/my_images'})"
        )


def resolved(cfg: DictConfig) -> dict:
    try:
        return OmegaConf.to_container(job_config(cfg), resolve=True)
    except OmegaConfBaseException as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        key = getattr(exc, "full_key", None)
        raise UserError(f"cannot resolve the config{f' at {key}' if key else ''}: {first}") from None


def lookup(plain: dict, path: str) -> tuple[bool, object]:
    node = plain
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def leaves(node, prefix: str):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaves(value, f"{prefix}.{key}")
    elif isinstance(node, (list, tuple, ListConfig)):
        for i, value in enumerate(node):
            yield from leaves(value, f"{prefix}[{i}]")
    else:
        yield prefix, node


def check_writable(folder, key: str, fix: str) -> None:
    """The folder exists (or can be made) and a file can be written in it."""
    if not folder:
        return
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except FileExistsError:
        raise UserError(f"{key}={folder} is not a directory ({fix})") from None
    except OSError as exc:
        raise UserError(f"{key}={folder} cannot be written: {exc.strerror or exc} ({fix})") from None


def os_error_line(exc: OSError) -> str:
    """One line for an OSError on a run or cache folder: what, where, and the usual fix. A temp
    name (an atomic write's, a cache entry's ``.tmp`` folder) is named by what it stands for."""
    where = f": {real_name(exc.filename)}" if exc.filename else ""
    return (
        f"cannot write{where}: {exc.strerror or exc} (free space or choose another folder: "
        "hydra.run.dir, paths.cache_dir)"
    )


ENVIRONMENT_ERRNOS = frozenset(
    {"EACCES", "EROFS", "ENOSPC", "ENOTDIR", "EEXIST", "EDQUOT", "EISDIR", "EPERM", "ENAMETOOLONG"}
)


def is_environment_error(exc: BaseException) -> bool:
    """An OSError the user fixes on the machine (permissions, space), not a bug to trace."""
    return isinstance(exc, OSError) and errno.errorcode.get(exc.errno or -1) in ENVIRONMENT_ERRNOS


# -- every job of a sweep, before the first runs ---------------------------------------------------
def sweep_jobs(config: DictConfig) -> list[list[str]]:
    """The overrides of each job of a ``-m`` sweep, expanded as Hydra's basic sweeper does."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    task = OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    overrides = OverridesParser.create().parse_overrides([*params, *task])
    return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def check_sweep(config: DictConfig) -> None:
    """Compose and check every job of a sweep (``check_config``); a bad one is a UserError
    naming the job, before any job has run."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    loader = GlobalHydra.instance().config_loader()
    jobs = sweep_jobs(config)
    if len(jobs) < 2:
        return
    try:
        for number, overrides in enumerate(jobs):
            job = loader.load_sweep_config(config, list(overrides))
            HydraConfig.instance().set_config(job)  # ${hydra:...} interpolations resolve
            try:
                check_config(job)
            except UserError as exc:
                raise UserError(
                    f"sweep job {number + 1} of {len(jobs)} ({' '.join(overrides)}): {exc}"
                ) from None
    finally:
        HydraConfig.instance().set_config(config)


try:  # Hydra's callback interface (hydra.callbacks in conf/hydra/default.yaml)
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
    Callback = object


class SweepCheck(Callback):
    """``on_multirun_start``: every job of the sweep checked before the first runs (a bad value
    in job 2 used to be found after job 1 had run); one ``error:`` line, exit status 2."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        import sys

        try:
            check_sweep(config)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
