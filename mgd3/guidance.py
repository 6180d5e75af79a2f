"""Mode guidance with stop guidance (MGD^3 stages 2 and 3).

Following the official DiT code, the guidance term ``lam * sigma_t * (m - x0_hat)`` is added to
the posterior mean of x_{t-1} -- equivalently to x_{t-1} after the scheduler step, since the
step's noise is additive -- where ``x0_hat`` is predicted from the conditional half of the CFG
batch and ``sigma_t`` is the step's standard deviation. Sample j of a class is pulled toward
mode j. Guidance runs only while the step index (counting down from steps-1) is above ``t_sg``.
"""

from __future__ import annotations

import torch

from ddcore.sampling import StepContext


class ModeGuidance:
    """Pulls each sample toward its mode: x_{t-1} += lam * sigma_t * (m - x0_hat), index > t_sg."""

    def __init__(self, modes: torch.Tensor, lam: float, t_sg: int):
        self.modes = modes
        self.lam = float(lam)
        self.t_sg = int(t_sg)

    def subset(self, start: int, n: int) -> "ModeGuidance":
        """Guidance for samples start..start+n of the class (when a class is sampled in chunks)."""
        return ModeGuidance(self.modes[start:start + n], self.lam, self.t_sg)

    def active(self, ctx: StepContext) -> bool:
        return self.lam != 0.0 and ctx.index > self.t_sg

    def adjust_eps(self, eps: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return eps

    def adjust_prev(self, x_prev: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        if not self.active(ctx):
            return x_prev
        modes = self.modes.to(x_prev.device, x_prev.dtype)
        return x_prev + self.lam * ctx.sigma * (modes - ctx.x0_hat)
