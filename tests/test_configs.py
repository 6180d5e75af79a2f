"""Every config group composes with the others that make sense; schemas catch typos early."""

import pytest
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ddapp.cli import GROUPS, check_group_choices, group_options
from tests.configs import CONF


def resolved(cfg):
    keys = [k for k in cfg.keys() if k != "hydra"]
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, keys), resolve=True)


@pytest.mark.parametrize(
    "group", ["dataset", "generator", "method", "eval", "trainer", "logger", "task", "experiment", "debug"]
)
def test_every_option_composes_and_resolves(make_cfg, group):
    for option in group_options([CONF], group):
        extra = ["dataset.root=/some/dir"] if option == "image_folder" else []
        cfg = make_cfg(f"{group}={option}", *extra, tiny=False)
        resolved(cfg)


def test_each_generator_yaml_gives_its_loader_every_setting_it_takes(make_cfg):
    """The YAML is the one place a generator's defaults are written: its loader has none (but
    ``vae``, which only a latent generator names), so each setting must be there, and no other."""
    import inspect

    from hydra.utils import get_method

    for option in group_options([CONF], "generator"):
        settings = resolved(make_cfg(f"generator={option}", tiny=False))["generator"]
        params = inspect.signature(get_method(settings.pop("_target_"))).parameters
        settings.pop("_convert_", None)
        required = {n for n, p in params.items() if p.kind == p.KEYWORD_ONLY and p.default is p.empty}
        assert required <= set(settings), f"generator={option} misses {required - set(settings)}"
        assert set(settings) <= set(params), f"generator={option}: {set(settings) - set(params)} unknown"
        optional = {n for n, p in params.items() if p.default is not p.empty}
        assert optional <= {"vae"}, f"{option}'s loader repeats defaults: {optional}"


def test_method_constructors_take_their_defaults_from_the_config(make_cfg):
    """Only the objects a YAML injects (an observer's teacher, loader, trainer) may default."""
    import inspect

    from hydra.utils import get_class

    for option in group_options([CONF], "method"):
        cls = get_class(make_cfg(f"method={option}", tiny=False).method._target_)
        defaults = {
            name
            for klass in cls.__mro__
            if "__init__" in vars(klass)
            for name, p in inspect.signature(vars(klass)["__init__"]).parameters.items()
            if p.default is not p.empty
        }
        assert defaults <= {"teacher", "classifier", "trainer"}, f"method={option} repeats {defaults}"


@pytest.mark.parametrize("dataset", ["digits", "fashion_mnist", "imagenette", "cifar10"])
@pytest.mark.parametrize("generator", ["dit_tiny", "unet_tiny", "dit_xl2", "sd15", "ldm"])
@pytest.mark.parametrize("method", ["mgd3", "unguided", "random"])
def test_groups_compose_with_each_other(make_cfg, dataset, generator, method):
    cfg = make_cfg(f"dataset={dataset}", f"generator={generator}", f"method={method}")
    assert resolved(cfg)["generator"]["_target_"]


@pytest.mark.parametrize("method", ["mgd3", "unguided", "random"])
@pytest.mark.parametrize("trainer", ["cpu", "gpu", "ddp"])
def test_methods_trainers_eval_instantiate(make_cfg, method, trainer):
    cfg = make_cfg(f"method={method}", f"trainer={trainer}")
    assert instantiate(cfg.method).name == method
    assert instantiate(cfg.eval).repeats == 1
    factory = instantiate(cfg.trainer)  # a Trainer with the group's hardware, built per student
    assert factory.func.__name__ == "Trainer"
    assert factory.keywords["accelerator"] == ("cpu" if trainer == "cpu" else "gpu")
    assert factory.keywords.get("strategy") == ("ddp" if trainer == "ddp" else None)


def test_misspelt_method_key_fails_at_composition(make_cfg):
    with pytest.raises(ConfigCompositionException):
        make_cfg("method.lamm=0.1")


def test_wrong_type_fails_at_composition(make_cfg):
    with pytest.raises(ConfigCompositionException):
        make_cfg("method.t_sg=abc")


def test_defaults_are_the_documented_job(make_cfg):
    cfg = make_cfg("logger=wandb", tiny=False)  # the fixture's base sets logger=none
    assert (cfg.ipc, cfg.method.lam, cfg.method.t_sg, cfg.method.steps) == (10, 0.1, 25, 50)
    assert cfg.generator.name == "dit_tiny" and cfg.dataset._target_.endswith("digits")
    assert cfg.logger.mode == "offline"


def test_unknown_choice_names_the_options():
    line = check_group_choices(["method=mgd4"], CONF)
    assert line.startswith("error: unknown method 'mgd4'") and "mgd3" in line
    assert check_group_choices(["method=mgd3,random", "ipc=3"], CONF) is None
    assert set(GROUPS) >= {"dataset", "generator", "method", "eval"}


REFERENCE_DEFAULT = {
    "digits": True,
    "cifar10": True,
    "imagenette": True,
    "imagenet100": False,
    "imagenet1k": False,
}


@pytest.mark.parametrize("eval_", ["hard_label", "soft_label"])
@pytest.mark.parametrize("dataset, enabled", list(REFERENCE_DEFAULT.items()))
def test_large_datasets_default_to_no_reference_students(make_cfg, dataset, eval_, enabled):
    """Full-data students on ImageNet-1k / -100 take days: off unless asked for."""
    cfg = make_cfg(f"dataset={dataset}", f"eval={eval_}", tiny=False)
    assert resolved(cfg)["eval"]["reference"]["enabled"] is enabled
    cfg = make_cfg(f"dataset={dataset}", f"eval={eval_}", "eval.reference.enabled=true", tiny=False)
    assert resolved(cfg)["eval"]["reference"]["enabled"] is True
    assert resolved(cfg)["dataset"]["_target_"].startswith("ddcore.data.")  # nothing else in it


def test_data_workers_follow_the_cpus_slurm_reserves(make_cfg, monkeypatch):
    """hydra/launcher=slurm reserves cpus_per_task (8) per task: the file-decoding workers use
    them, one CPU left to the process that trains; none without a reservation."""
    from ddapp.config_checks import check_config

    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "8")
    for eval_ in ("hard_label", "soft_label"):
        cfg = make_cfg("dataset=imagenet1k", f"eval={eval_}", tiny=False)
        assert resolved(cfg)["eval"]["num_workers"] == 7
        check_config(cfg)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert resolved(make_cfg())["eval"]["num_workers"] == 0
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    assert resolved(make_cfg())["eval"]["num_workers"] == 0
