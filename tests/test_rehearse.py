"""``make rehearse`` at toy sizes: the same stages, layouts and commands as the real rehearsal."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_clip_tokenizer_written_offline_keeps_ids_below_the_encoders_vocab(tmp_path):
    from transformers import CLIPTokenizer

    from experiments.rehearse import write_clip_tokenizer

    write_clip_tokenizer(tmp_path / "tokenizer")
    ids = CLIPTokenizer.from_pretrained(str(tmp_path / "tokenizer"))(
        "an image of tench, tinca tinca"
    ).input_ids
    assert ids[0] == 49406 and ids[-1] == 49407 and max(ids) < 49408 and len(ids) > 10


@pytest.mark.slow
def test_every_rehearsal_stage_runs_at_toy_sizes(tmp_path):
    out = tmp_path / "results"
    cmd = [sys.executable, "experiments/rehearse.py", "--small", "--work", str(tmp_path), "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["stages"]) == 9 and all(s["ok"] for s in summary["stages"].values())
    check = summary["stages"]["paper_preset_mgd3_imagenette"]["paper_check"]
    assert check["exit_code"] == 0 and any("NOT at the paper's scale" in line for line in check["output"])
    assert summary["stages"]["random_imagenet1k_ipc50_ddp2"]["ranks"] == 2
    assert "| random_imagenet1k_ipc50_ddp2 | ok |" in (out / "README.md").read_text()
