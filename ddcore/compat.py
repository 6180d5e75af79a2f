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
