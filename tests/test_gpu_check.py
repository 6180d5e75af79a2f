"""`make gpu-check`: one line and exit 0 without CUDA; the same code path runs at tiny shapes."""

import re

import pytest
import torch

from experiments.gpu_check import dit_rows, main


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the check would run")
def test_skips_with_one_line_without_cuda(capsys):
    assert main([]) == 0
    assert capsys.readouterr().out == "gpu-check: skipped, no CUDA device is visible\n"


@pytest.mark.slow
def test_tiny_shapes_print_one_table_and_write_the_report(capsys, tmp_path):
    assert main(["--tiny", "--out", str(tmp_path / "gpu.md")]) == 0
    out = capsys.readouterr().out
    assert out.count("| tiny DiT") == 6 and "k-means" in out and "DDP student step" in out
    report = (tmp_path / "gpu.md").read_text()
    assert report.startswith("# GPU check") and report.count("| tiny DiT") == 6


def test_dit_rows_time_the_method_path_and_compare_cross_class_latents():
    rows = dit_rows(torch.device("cpu"), tiny=True, steps=2, ipc=2, classes=3)
    assert [r[0] for r in rows[:3]] == [
        "tiny DiT bfloat16 batch 1",
        "tiny DiT bfloat16 IPC 2",
        "tiny DiT bfloat16 3 classes x IPC 2 (class_batch 3)",
    ]
    assert len(rows) == 6 and all(r[1].endswith(" img/s") for r in rows)
    for _, _, note in (rows[2], rows[5]):  # bf16 and fp32 cross-class rows
        diff = float(re.search(r"vs one class per batch (\S+)$", note).group(1))
        assert diff <= 1e-5  # the same samples as one class per batch, up to float rounding
    for first, batched in ((rows[0], rows[1]), (rows[3], rows[4])):  # the official loop, then IPC
        assert "official loop" in first[2]
        ratio = float(re.search(r"; (\S+)x the official one-image loop", batched[2]).group(1))
        expected = float(batched[1].split()[0]) / float(first[1].split()[0])
        assert abs(ratio - expected) <= 0.05 + 0.05 * expected  # rates are printed rounded
