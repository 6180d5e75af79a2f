"""Import-order fixes that must run before torchvision is first imported.

PyPI's torchvision 0.28.0 wheel is built against CUDA torch. Next to the CPU build of
torch 2.13.0 its compiled ops library cannot load, and ``import torchvision`` then dies in
``_meta_registrations`` with "operator torchvision::nms does not exist" -- which also breaks
lightning, diffusers, timm and transformers, which all import torchvision. Declaring the two op
schemas that module registers fake kernels for lets the pure-Python parts (transforms, models)
import. We only do this when the compiled library really cannot load, so a matching build
(GPU machines) is left untouched.
"""

from __future__ import annotations

import importlib.util
import os

_LIBRARY = None  # keeps the torch.library.Library alive for the whole process


def declare_missing_torchvision_ops() -> bool:
    """Returns True when the schemas had to be declared (compiled torchvision ops unavailable)."""
    global _LIBRARY
    if _LIBRARY is not None:
        return True
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return False
    import torch

    compiled = os.path.join(os.path.dirname(spec.origin), "_C.so")
    try:
        torch.ops.load_library(compiled)
        return False
    except (OSError, RuntimeError):
        pass
    _LIBRARY = torch.library.Library("torchvision", "DEF")
    _LIBRARY.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    return True


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP_BELOW = 1 << 30  # bytes: blocks up to 1 GiB come from (and go back to) the process's heap


def keep_freed_memory(enabled: bool = True) -> bool:
    """Stop glibc from handing every large tensor's memory back to the kernel when it is freed.

    By default a block over glibc's mmap threshold (at most 32 MiB, adjusted as blocks are
    freed) is mmap-ed on allocation and unmapped on free, and the heap top is trimmed past
    128 KiB; a CPU forward pass allocates and frees the same activation sizes every batch, so
    each batch page-faults its activations in afresh. A ConvNet-32 test pass over 10,000 28 px
    images spent half its time in the kernel that way (4.0 s -> 1.9 s with this; `make bench`).
    The cost: the process keeps its peak heap instead of shrinking after it (blocks up to 1 GiB:
    at ImageNet scale the peaks of decoding and reading sets back stay resident), so it is
    opt-in: the application turns it on for CPU training (``allocator.keep_freed: auto``), never
    on import. ``DD_KEEP_FREED_MEMORY=0`` / ``1`` overrides ``enabled``. Returns whether it is
    on; False also where the C library has no ``mallopt`` (not glibc).
    """
    enabled = {"0": False, "1": True}.get(os.environ.get("DD_KEEP_FREED_MEMORY", ""), enabled)
    if not enabled:
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP_BELOW)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_BELOW))
