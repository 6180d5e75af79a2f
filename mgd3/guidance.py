"""Mode guidance with stop guidance (MGD^3 stages 2 and 3).

Sample j of a class is pulled toward mode j through ``g_t = m_j - x0_hat``. ``x0_hat`` is
predicted from the CFG-combined eps by default (``method.x0_from=cfg``): the official code calls
DiT through ``forward_with_cfg``, which returns the guided eps for both halves, and computes
``pred_xstart`` from it; ``x0_from=cond`` uses the conditional half instead (``ddcore.sampling``).
Guidance runs only while the step index (counting down from steps-1) is above ``t_sg``.

Three ways to inject it (``injection``). Each changes x_{t-1} by ``c_t * lam * g_t`` at a guided
step; with abar = alpha_bar_t, abar' = alpha_bar_{t-1} (of the spaced grid) and
beta_t = 1 - abar / abar':

``posterior_mean`` (default; the official code, which produced the paper's numbers)
    x_{t-1} += lam * s_t * g_t after the scheduler step; adding to x_{t-1} equals adding to its
    posterior mean, since the step's noise is additive. DDPM: s_t = sigma_t, the step's own
    standard deviation (DiT's learned one, exp(0.5 * log_variance), when the model predicts
    variance). DDIM (eta = 0) has sigma_t = 0, and the official SD variant scales by
    sqrt(abar) instead; so does this code.
        DDPM: c_t = sigma_t                     DDIM: c_t = sqrt(abar)

``eps`` (paper eq. 6 / Algorithm 1: guidance added to eps before the scheduler update)
    Since x0_hat = (x_t - sqrt(1 - abar) eps) / sqrt(abar), shifting eps by d moves x0_hat by
    -sqrt(1 - abar) / sqrt(abar) * d. Eq. 6 read literally, eps_hat = eps + lam * sigma_t * g_t,
    therefore moves x0_hat *away* from the mode. We flip the sign so that it pulls toward the
    mode, as classifier guidance does (Dhariwal & Nichol, Alg. 2: eps_hat = eps - sqrt(1 - abar)
    * grad log p, with the "gradient" g_t), and take for sigma_t the marginal noise std
    sqrt(1 - abar) (DDIM's step std is 0 at eta = 0, which would switch eq. 6 off):
        eps_hat = eps - lam * sqrt(1 - abar) * g_t   ->   x0_hat += lam * (1 - abar) / sqrt(abar) g_t
        DDPM: c_t = sqrt(abar') beta_t / (1 - abar) * (1 - abar) / sqrt(abar)
                  = sqrt(abar') beta_t / sqrt(abar)
        DDIM: c_t = sqrt(abar') (1 - abar) / sqrt(abar) - sqrt(1 - abar') sqrt(1 - abar)

``x0`` (the only public DDIM mode-guidance code, in the ManifoldGD repository)
    x0_hat += lam * g_t, then eps re-derived from the shifted x0_hat, i.e.
    eps_hat = eps - lam * sqrt(abar) / sqrt(1 - abar) * g_t:
        DDPM: c_t = sqrt(abar') beta_t / (1 - abar)
        DDIM: c_t = sqrt(abar') - sqrt(1 - abar') sqrt(abar) / sqrt(1 - abar)

The defaults use ``posterior_mean`` for both samplers: it is what the official DiT code (DDPM)
and SD code (DDIM scale) run. Pixel-space schedules clip x0, so the eps routes are linear only
away from the clip; DDIM there re-derives eps from the clipped x0
(``ddcore.sampling.step_options``), else a clipped x0 would leave only the direction term,
which moves x_{t-1} away from the mode. The coefficients are checked step by step in
tests/test_parity.py against an implementation written from these formulas.
"""

from __future__ import annotations

import torch

from ddcore.errors import UserError
from ddcore.sampling import StepContext

INJECTIONS = ("posterior_mean", "eps", "x0")


def check_injection(injection: str) -> str:
    if injection not in INJECTIONS:
        raise UserError(
            f"unknown method.injection {injection!r} (use one of: "
            f"{', '.join(INJECTIONS)}; posterior_mean is the official code's update)"
        )
    return injection


class ModeGuidance:
    """Pulls sample j toward mode j while the step index is above t_sg (see module docstring)."""

    def __init__(self, modes: torch.Tensor, lam: float, t_sg: int, injection: str = "posterior_mean"):
        self.modes = modes
        self.lam = float(lam)
        self.t_sg = int(t_sg)
        self.injection = check_injection(injection)

    def subset(self, start: int, n: int) -> "ModeGuidance":
        """Guidance for samples start..start+n of the class (when a class is sampled in chunks)."""
        return ModeGuidance(self.modes[start : start + n], self.lam, self.t_sg, self.injection)

    def active(self, ctx: StepContext) -> bool:
        return self.lam != 0.0 and ctx.index > self.t_sg

    def pull(self, ctx: StepContext) -> torch.Tensor:
        """g_t = m - x0_hat."""
        return self.modes.to(ctx.x0_hat.device, ctx.x0_hat.dtype) - ctx.x0_hat

    def adjust_eps(self, eps: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        if self.injection == "posterior_mean" or not self.active(ctx):
            return eps
        if self.injection == "eps":
            # eq. 6 with the sign that pulls x0_hat toward the mode (see the module docstring)
            return eps - self.lam * (1 - ctx.alpha_bar).sqrt() * self.pull(ctx)
        # x0: shift x0_hat by lam * g_t and re-derive eps from it
        return eps - self.lam * (ctx.alpha_bar / (1 - ctx.alpha_bar)).sqrt() * self.pull(ctx)

    def adjust_prev(self, x_prev: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        if self.injection != "posterior_mean" or not self.active(ctx):
            return x_prev
        scale = ctx.alpha_bar.sqrt() if ctx.sampler == "ddim" else ctx.sigma
        return x_prev + self.lam * scale * self.pull(ctx)
