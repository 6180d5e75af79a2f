"""Entry point: ``python run.py [group=option ...] [key=value ...]`` (Hydra; ``-m`` for sweeps).

Examples:
    python run.py                                         # MGD^3 on digits, IPC 10
    python run.py method=mgd3 dataset=imagenette ipc=10 generator=dit_xl2
    python run.py -m method=mgd3 method.t_sg=10,20,25,30 method.lam=0.05,0.1
    python run.py task=evaluate eval.distilled_dir=<folder>
    python run.py debug=tiny                              # seconds on a CPU: smoke test
"""

import os
import signal
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent
os.environ.setdefault("PROJECT_ROOT", str(ROOT))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from ddapp.cli import (  # noqa: E402
    IN_TASK,
    check_group_choices,
    claim_run_folder,
    fail,
    install_one_line_errors,
    note_run_folder,
    raise_on_signals,
    remember_run_folders,
    report_interrupt,
)
from ddapp.schemas import register  # noqa: E402
from ddcore.errors import UserError  # noqa: E402
from ddcore.interrupts import Interrupted, pending, raise_pending  # noqa: E402

register()
warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # lightning vs torch 2.13 deprecation


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from ddapp.config_checks import check_config, is_environment_error, os_error_line

    claim_run_folder(Path(cfg.paths.output_dir))  # made by this job, or there before it (fail())
    note_run_folder(Path(cfg.paths.output_dir))  # named by the line an interrupt prints
    try:
        check_config(cfg)  # every setting, before any work (and before torch is imported)
    except UserError as exc:
        fail(str(exc), Path(cfg.paths.output_dir))
    from ddapp.jobs import build, close_loggers, quiet_lightning

    quiet_lightning()
    try:
        metrics = build(cfg.task)(cfg)
    except UserError as exc:
        fail(str(exc), Path(cfg.paths.output_dir))
    except OSError as exc:  # a read-only or full disk: the user fixes the machine, not the code
        if not is_environment_error(exc):
            setattr(exc, IN_TASK, True)
            raise
        fail(os_error_line(exc), Path(cfg.paths.output_dir))
    except Exception as exc:
        setattr(exc, IN_TASK, True)  # a bug: Hydra prints its traceback
        raise
    finally:
        close_loggers()  # one wandb run per job, even when a job fails
    return metrics.get("student/final_acc_mean")  # what sweepers optimise


if __name__ == "__main__":
    problem = check_group_choices(sys.argv[1:], ROOT / "conf")
    if problem:
        print(problem, file=sys.stderr)
        sys.exit(2)
    install_one_line_errors()
    remember_run_folders(sys.argv[1:])  # before Hydra makes (or reuses) the run folder
    from ddcore.distributed import init_process_group

    try:  # several processes (torchrun, SLURM tasks): one group, one clock for the run folder
        init_process_group()
    except UserError as exc:
        fail(str(exc))
    raise_on_signals()  # SIGTERM (preemption) and Ctrl-C: one line saying how to resume
    try:
        main()
        raise_pending()  # a signal a finaliser swallowed while the run went on
    except Interrupted as exc:
        report_interrupt(exc)
    except SystemExit as exc:  # Lightning's SIGTERMException (exit 0): a swallowed signal here,
        # or, on the other ranks of a DDP student, the rank that got one
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if pending() is None and not isinstance(exc, SIGTERMException):
            raise
        report_interrupt(Interrupted(pending() or signal.SIGTERM))
