"""The exponential moving average of a model's weights: the weights a trained generator samples with."""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_copy(model: nn.Module) -> nn.Module:
    """The average's starting point: a frozen copy of ``model``."""
    return copy.deepcopy(model).requires_grad_(False)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, step: int, decay: float) -> None:
    """One step of the average, with the usual warm-up (n+1)/(n+10) so early steps count."""
    decay = min(decay, (1 + step) / (10 + step))
    for ema_p, p in zip(ema.parameters(), model.parameters()):
        ema_p.lerp_(p, 1.0 - decay)
