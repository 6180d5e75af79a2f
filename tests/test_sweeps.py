"""The paper's ablation sweeps (conf/experiment/) and the launchers that run them elsewhere."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from ddapp.schemas import MGD3Schema

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def compose_job(*overrides):
    """One job's config as a multirun would compose it (hydra node included)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def sweep_points(cfg) -> dict[str, list]:
    """``hydra.sweeper.params`` expanded as the basic sweeper expands it."""
    params = cfg.hydra.sweeper.params or {}
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    return {o.get_key_element(): list(o.sweep_iterator()) for o in parsed}


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


def test_tsg_sweep_runs_50_down_to_0_in_steps_of_5():
    cfg = compose_job("experiment=mgd3_tsg_sweep")
    assert sweep_points(cfg) == {"method.t_sg": list(range(0, 55, 5))}
    assert cfg.method._target_ == "mgd3.distiller.MGD3" and cfg.ipc == 10
    assert cfg.hydra.runtime.choices.dataset == "imagenette"
    for t_sg in (0, 50):  # every point composes (the sweeper checks this before launching)
        assert compose_job("experiment=mgd3_tsg_sweep", f"method.t_sg={t_sg}").method.t_sg == t_sg


def test_lam_sweep_includes_zero_and_the_paper_default():
    cfg = compose_job("experiment=mgd3_lam_sweep")
    lams = sweep_points(cfg)["method.lam"]
    assert 0.0 in lams and 0.1 in lams and lams == sorted(lams) and cfg.method.t_sg == 25


def test_mode_discovery_sweep_names_the_papers_four_methods():
    cfg = compose_job("experiment=mgd3_mode_discovery")
    methods = sweep_points(cfg)["method.mode_discovery"]
    assert methods == ["kmeans", "closest_real", "random_real", "dbscan"]
    if "mode_discovery" not in MGD3Schema.__dataclass_fields__:
        pytest.skip("method.mode_discovery is not in the MGD^3 schema yet")
    for name in methods:
        job = compose_job("experiment=mgd3_mode_discovery", f"method.mode_discovery={name}")
        assert job.method.mode_discovery == name


ROWS = {
    "unguided": ("baselines.unguided.UnguidedSampling", None),
    "mode_discovery_only": ("baselines.real.KMeansReal", None),
    "mode_guidance": ("mgd3.distiller.MGD3", 0),
    "stop_guidance": ("mgd3.distiller.MGD3", 25),
}


@pytest.mark.parametrize("row", list(ROWS))
def test_component_rows_compose_into_flat_folders(row):
    cfg = compose_job("experiment=mgd3_components")
    assert sweep_points(cfg) == {"+experiment/components": list(ROWS)}
    if row == "mode_discovery_only" and not (CONF / "method" / "kmeans_real.yaml").is_file():
        pytest.skip("method=kmeans_real (k-means closest real image) is not in conf/method yet")
    job = compose_job("experiment=mgd3_components", f"+experiment/components={row}", "seed=1")
    target, t_sg = ROWS[row]
    assert job.method._target_ == target and job.method.get("t_sg") == t_sg
    assert row != "mode_discovery_only" or job.method.space == "latents"
    subdir = OmegaConf.to_container(job.hydra.sweep, resolve=True)["subdir"]
    assert subdir == f"components={row},experiment=mgd3_components,seed=1"  # no "/": one level


def test_component_sweep_keeps_the_default_folder_name_exclusions():
    default = OmegaConf.load(CONF / "hydra" / "default.yaml").job.config.override_dirname
    ours = compose_job("experiment=mgd3_components").hydra.job.config.override_dirname
    assert set(default.exclude_keys) <= set(ours.exclude_keys)


@pytest.mark.parametrize(
    "launcher, target",
    [
        ("submitit_slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
        ("submitit_local", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"),
        ("joblib", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
    ],
)
def test_launchers_compose_with_a_sweep(launcher, target):
    extra = (
        ["hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=1"]
        if launcher == "submitit_slurm"
        else []
    )
    cfg = compose_job("experiment=mgd3_tsg_sweep", f"hydra/launcher={launcher}", *extra)
    assert cfg.hydra.launcher._target_ == target
    if extra:
        assert cfg.hydra.launcher.partition == "gpu" and cfg.hydra.launcher.gpus_per_node == 1
        assert cfg.hydra.launcher.submitit_folder == f"{cfg.hydra.sweep.dir}/.submitit/%j"


def test_local_parallel_launcher_runs_an_experiment_sweep(cache_dir, tmp_path):
    """Two jobs of the component ablation at once (joblib); the real-image row needs no generator."""
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable,
        str(ROOT / "run.py"),
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "experiment=mgd3_components",
        "+experiment/components=mode_discovery_only",
        "method.space=pixels",
        "seed=0,1",
        "dataset=digits",
        "task=distill",
        "debug=tiny",
        "logger=none",
        f"hydra.sweep.dir={sweep}",
        f"paths.cache_dir={cache_dir}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2," in proc.stdout + proc.stderr
    folders = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert folders == [
        f"components=mode_discovery_only,dataset=digits,debug=tiny,"
        f"experiment=mgd3_components,method.space=pixels,seed={seed},task=distill"
        for seed in (0, 1)
    ]
    sets = []
    for name in folders:
        manifest = json.loads((sweep / name / "distilled" / "manifest.json").read_text())
        assert manifest["method"] == "kmeans_real" and len(manifest["images"]) == 20
        sets.append([entry["source_index"] for entry in manifest["images"]])
    assert sets[0] != sets[1]  # each job ran with its own seed


def test_patchsel_ablations_sweep_clustering_and_images_per_class():
    cfg = compose_job("experiment=patchsel_ablations")
    assert sweep_points(cfg) == {"method.clustering": [True, False], "method.images_per_class": [300, None]}
    assert cfg.method._target_ == "patchsel.distiller.PatchSelection"
    assert cfg.eval._target_ == "eval.soft_label.SoftLabelProtocol"
    assert cfg.hydra.runtime.choices.generator == "sd15"
    job = compose_job(
        "experiment=patchsel_ablations", "method.clustering=false", "method.images_per_class=null"
    )
    assert job.method.clustering is False and job.method.images_per_class is None


def test_group_overrides_with_a_slash_still_give_one_folder_per_job():
    job = compose_job("eval=soft_label", "eval/student=convnet", "method=patchsel")
    subdir = OmegaConf.to_container(job.hydra.sweep, resolve=True)["subdir"]
    assert subdir == "eval.student=convnet,eval=soft_label,method=patchsel"
