"""Shared fixtures: Hydra configs composed for tiny, CPU, logger-free runs in tmp folders."""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the network
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:  # make test: files side by side, the cores shared
    _threads = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    os.environ.setdefault("OMP_NUM_THREADS", _threads)  # before torch is imported; runs inherit it
    os.environ.setdefault("MKL_NUM_THREADS", _threads)

import pytest  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402

import ddcore  # noqa: E402,F401  (torchvision import fix)
from ddapp.schemas import register  # noqa: E402
from tests.configs import compose_job  # noqa: E402

register()


# the slowest files (pytest --durations), collected first so that make test's workers, which take
# a file at a time, finish together instead of one running the last long file alone
SLOWEST_FIRST = (
    "test_reliability.py",
    "test_reference_experiment.py",
    "test_reliability_review.py",
    "test_cli.py",
    "test_cluster.py",
    "test_paper_check.py",
    "test_sweeps.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest as collected


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One generator cache for the session: the tiny generator is trained once, then reused."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def make_cfg(tmp_path, cache_dir):
    """compose(overrides) -> a config for a tiny CPU run writing under tmp_path."""

    def _make(*overrides, tiny=True):
        base = [
            "logger=none",
            "trainer=cpu",
            f"paths.cache_dir={cache_dir}",
            f"paths.log_dir={tmp_path / 'logs'}",
        ] + (["debug=tiny"] if tiny else [])
        cfg = compose_job(base + list(overrides), tmp_path / "run")
        Path(cfg.paths.output_dir).mkdir(parents=True, exist_ok=True)
        return cfg

    yield _make
    GlobalHydra.instance().clear()
