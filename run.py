"""Entry point: ``python run.py [group=option ...] [key=value ...]`` (Hydra; ``-m`` for sweeps).

Examples:
    python run.py                                         # MGD^3 on digits, IPC 10
    python run.py method=mgd3 dataset=imagenette ipc=10 generator=dit_xl2
    python run.py -m method=mgd3 method.t_sg=10,20,25,30 method.lam=0.05,0.1
    python run.py task=evaluate eval.distilled_dir=<folder>
    python run.py debug=tiny                              # seconds on a CPU: smoke test
"""

import os
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent
os.environ.setdefault("PROJECT_ROOT", str(ROOT))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from ddcore.cli import check_group_choices, fail  # noqa: E402
from ddcore.errors import UserError  # noqa: E402
from ddcore.schemas import register  # noqa: E402

register()
warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # lightning vs torch 2.13 deprecation


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from ddcore.tasks import build, close_loggers, quiet_lightning

    quiet_lightning()
    try:
        metrics = build(cfg.task)(cfg)
    except UserError as exc:
        fail(str(exc), Path(cfg.paths.output_dir))
    finally:
        close_loggers()  # one wandb run per job, even when a job fails
    return metrics.get("student/final_acc_mean")  # what sweepers optimise


if __name__ == "__main__":
    problem = check_group_choices(sys.argv[1:], ROOT / "conf")
    if problem:
        print(problem, file=sys.stderr)
        sys.exit(2)
    main()
