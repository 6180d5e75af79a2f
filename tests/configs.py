"""Configs composed as ``run.py`` composes them: a whole job's (the ``make_cfg`` fixture) or
one generator's settings, for a test that calls a loader directly (the YAML stays the one place
a default is written)."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

CONF = Path(__file__).resolve().parents[1] / "conf"


def compose_job(overrides: list[str], output_dir: Path | None = None) -> DictConfig:
    """The config ``run.py <overrides>`` runs with (``paths.output_dir`` set when given); the
    schemas must be registered (``tests/conftest.py``, or ``generator_settings``)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg


def generator_settings(name: str, **settings) -> dict:
    """What ``generator=<name>`` hands its loader (resolved once per name, on the CPU trainer;
    pass paths that follow the environment, such as ``model_dir``, explicitly), ``_target_``
    left out, with ``settings`` replacing whole keys."""
    return {**copy.deepcopy(_generator(name)), **settings}


@functools.cache
def _generator(name: str) -> dict:
    from ddapp.schemas import register

    register()  # once per name, in any process: a spawned rank's too (tests/test_sharding.py)
    cfg = compose_job(["logger=none", "trainer=cpu", f"generator={name}"])
    plain = OmegaConf.to_container(cfg.generator, resolve=True)
    for key in ("_target_", "_convert_"):
        plain.pop(key, None)
    GlobalHydra.instance().clear()
    return plain
