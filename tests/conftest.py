"""Shared fixtures: Hydra configs composed for tiny, CPU, logger-free runs in tmp folders."""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the network
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import open_dict  # noqa: E402

import ddcore  # noqa: E402,F401  (torchvision import fix)
from ddapp.schemas import register  # noqa: E402

register()
CONF = ROOT / "conf"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One generator cache for the session: the tiny generator is trained once, then reused."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def make_cfg(tmp_path, cache_dir):
    """compose(overrides) -> a config for a tiny CPU run writing under tmp_path."""

    def _make(*overrides, tiny=True):
        GlobalHydra.instance().clear()
        with initialize_config_dir(str(CONF), version_base="1.3"):
            base = [
                "logger=none",
                "trainer=cpu",
                f"paths.cache_dir={cache_dir}",
                f"paths.log_dir={tmp_path / 'logs'}",
            ] + (["debug=tiny"] if tiny else [])
            cfg = compose("config", overrides=base + list(overrides), return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "run")
        Path(cfg.paths.output_dir).mkdir(parents=True, exist_ok=True)
        return cfg

    yield _make
    GlobalHydra.instance().clear()
