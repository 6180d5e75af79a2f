"""Paper presets (conf/experiment/*_table*.yaml): each composes, takes another ipc, runs the
paper's generator, method, protocol, student and repeats, and carries the paper's numbers
(as in the project's reference notes; docs/papers.md)."""

import subprocess
import sys
from pathlib import Path

import pytest

from ddapp.config_checks import check_config

ROOT = Path(__file__).resolve().parents[1]
HARD, SOFT = "eval.hard_label.HardLabelProtocol", "eval.soft_label.SoftLabelProtocol"
MGD3, UNGUIDED = "mgd3.distiller.MGD3", "baselines.unguided.UnguidedSampling"
PATCHSEL = "patchsel.distiller.PatchSelection"
AP10, R18 = "eval.students.ResNetAP", "eval.students.ResNet18"

# preset -> (subset, generator, method, protocol, student, epochs (None: by ipc))
SETUP = {
    "mgd3_imagenette_table1": ("imagenette", "dit_xl2", MGD3, HARD, AP10, None),
    "mgd3_imagenette_table1_unguided": ("imagenette", "dit_xl2", UNGUIDED, HARD, AP10, None),
    "mgd3_imageidc_table1": ("imageidc", "dit_xl2", MGD3, HARD, AP10, None),
    "mgd3_imagenet1k_table4": ("imagenet1k", "dit_xl2", MGD3, SOFT, R18, 300),
    "patchsel_imagenette_table1": ("imagenette", "sd15", PATCHSEL, SOFT, R18, 300),
    "patchsel_imagewoof_table1": ("imagewoof", "sd15", PATCHSEL, SOFT, R18, 300),
    "patchsel_imagenet1k_table1": ("imagenet1k", "sd15", PATCHSEL, SOFT, R18, 300),
}
# preset -> {ipc: the paper's mean top-1 %} (REFERENCE.md sections 1 and 2)
PAPER = {
    "mgd3_imagenette_table1": {10: 66.4, 20: 71.2, 50: 79.5},
    "mgd3_imagenette_table1_unguided": {10: 59.1, 20: 64.8, 50: 73.3},
    "mgd3_imageidc_table1": {10: 55.9, 20: 61.9, 50: 72.1},
    "mgd3_imagenet1k_table4": {10: 45.6, 50: 60.2},
    "patchsel_imagenette_table1": {10: 62.5, 50: 85.8, 100: 91.6},
    "patchsel_imagewoof_table1": {10: 44.3, 50: 73.5, 100: 80.2},
    "patchsel_imagenet1k_table1": {10: 43.9, 50: 59.4, 100: 61.8},
}


def test_every_preset_with_a_paper_block_is_checked_here():
    presets = (ROOT / "conf" / "experiment").glob("*.yaml")
    with_paper = {p.stem for p in presets if "\npaper:" in p.read_text()}
    assert with_paper == set(SETUP) == set(PAPER)


@pytest.mark.parametrize("name", sorted(SETUP))
def test_preset_composes_with_the_papers_settings(make_cfg, name):
    subset, generator, method, protocol, student, epochs = SETUP[name]
    numbers = PAPER[name]
    cfg = make_cfg(f"experiment={name}", tiny=False)
    check_config(cfg)  # every setting valid, nothing mandatory left unset
    assert cfg.dataset.subset == subset and cfg.generator.name == generator
    assert cfg.method._target_ == method and cfg.eval._target_ == protocol
    assert cfg.eval.student._target_ == student and cfg.eval.repeats == 3 and cfg.eval.epochs == epochs
    if student == AP10:
        assert cfg.eval.student.depth == 10 and cfg.eval.student.norm == "instance"
    else:  # RDED's ResNet-18 with BatchNorm, on a ResNet-18 teacher
        assert cfg.eval.student.norm == "batch" and "resnet18" in str(cfg.eval.teacher.model).lower()
    if method == MGD3:
        assert (cfg.method.lam, cfg.method.t_sg, cfg.method.mode_discovery) == (0.1, 25, "kmeans")
    paper = cfg.paper
    assert paper.name and paper.table and paper.source and paper.metric == "best"
    assert {int(k): v.mean for k, v in paper.acc.items()} == numbers
    assert all(v.std is None for v in paper.acc.values())  # not in our reference notes
    assert cfg.ipc == min(numbers)


@pytest.mark.parametrize("ipc", [20, 50])
def test_ipc_is_overridable(make_cfg, ipc):
    cfg = make_cfg("experiment=mgd3_imagenette_table1", f"ipc={ipc}", tiny=False)
    assert cfg.ipc == ipc and cfg.eval.epochs is None  # the protocol's by-ipc rule: 1500 epochs


def test_imagenet1k_presets_use_a_local_pretrained_teacher(make_cfg):
    for name in ("mgd3_imagenet1k_table4", "patchsel_imagenet1k_table1"):
        cfg = make_cfg(f"experiment={name}", tiny=False)
        assert cfg.eval.teacher.model._target_ == "eval.students.timm_student"
        assert cfg.eval.teacher.model.name == "resnet18"
        assert cfg.eval.teacher.pretrained_dir.endswith("resnet18_in1k")
        assert cfg.eval.reference.enabled is False


def test_cfg_job_prints_the_paper_block():
    out = subprocess.run(
        [sys.executable, "run.py", "experiment=patchsel_imagewoof_table1", "ipc=100", "--cfg", "job"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "ipc: 100" in out and "subset: imagewoof" in out
    assert "paper:" in out and "mean: 80.2" in out
