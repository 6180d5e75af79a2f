"""Run ``run.py`` once per case, each in a process forked from one warm interpreter.

``python tests/run_many.py cases.json`` reads ``[{"argv": [...], "env": {...}, "unset": [...],
"cwd": "..."}]`` and prints one JSON list of ``{"rc": int, "stderr": str, "seconds": float}``.
Each case runs run.py's ``__main__`` block exactly as ``python run.py <argv>`` would, but the
imports (Hydra, torch, diffusers) are paid once instead of once per case: the reliability
tests' cheap failures cost a fork each.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def warm_imports() -> None:
    """What every case imports anyway (no threads are started by importing these)."""
    sys.path.insert(0, str(ROOT))
    import sklearn.datasets  # noqa: F401

    import baselines.real  # noqa: F401
    import baselines.unguided  # noqa: F401
    import ddapp.tasks  # noqa: F401  (torch, lightning, hydra)
    import ddcore  # noqa: F401  (first: the torchvision fix)
    import ddcore.generators.dit  # noqa: F401  (diffusers)
    import ddcore.generators.self_trained  # noqa: F401
    import eval.hard_label  # noqa: F401
    import eval.set_metrics  # noqa: F401
    import mgd3.distiller  # noqa: F401


def run_and_exit(argv: list[str], cwd: str | None = None) -> None:
    """In a forked child: ``run.py <argv>`` as ``python run.py`` would run it, then exit with its
    status (also used by tests/run_ranks.py)."""
    os.chdir(cwd or os.getcwd())
    sys.argv = [str(ROOT / "run.py"), *argv]
    code = 0
    try:
        runpy.run_path(str(ROOT / "run.py"), run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001  (reported like the interpreter would)
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_cases(spec: list[dict], work: Path, timeout: int = 900) -> list[dict]:
    """Each case of ``spec`` as ``python run.py <argv>``, forked from one warm interpreter (this
    script in a subprocess, in ``work``): one ``{"rc", "stderr", "seconds"}`` per case."""
    import subprocess

    (work / "cases.json").write_text(json.dumps(spec))
    cmd = [sys.executable, str(Path(__file__).resolve()), str(work / "cases.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=work, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def run_case(case: dict) -> dict:
    start = time.perf_counter()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: run.py with this argv, stderr into the pipe
        os.close(read_end)
        os.dup2(write_end, 2)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        os.environ.update(case.get("env") or {})
        for key in case.get("unset") or []:
            os.environ.pop(key, None)
        run_and_exit(case["argv"], case.get("cwd"))
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        stderr = pipe.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    return {
        "rc": os.waitstatus_to_exitcode(status),
        "stderr": stderr,
        "seconds": round(time.perf_counter() - start, 2),
    }


if __name__ == "__main__":
    cases = json.loads(Path(sys.argv[1]).read_text())
    warm_imports()
    print(json.dumps([run_case(case) for case in cases]))
