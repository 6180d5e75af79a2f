"""`make gpu-check`: one line and exit 0 without CUDA; the same code path runs at tiny shapes."""

import pytest
import torch

from experiments.gpu_check import main


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the check would run")
def test_skips_with_one_line_without_cuda(capsys):
    assert main([]) == 0
    assert capsys.readouterr().out == "gpu-check: skipped, no CUDA device is visible\n"


@pytest.mark.slow
def test_tiny_shapes_print_one_table(capsys):
    assert main(["--tiny"]) == 0
    out = capsys.readouterr().out
    assert out.count("| tiny DiT") == 6 and "k-means" in out and "DDP student step" in out
