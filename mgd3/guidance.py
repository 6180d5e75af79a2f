"""Mode guidance with stop guidance (MGD^3 stages 2 and 3).

Sample j of a class is pulled toward mode j through ``g_t = m_j - x0_hat``, where ``x0_hat`` is
predicted from the conditional half of the CFG batch. Guidance runs only while the step index
(counting down from steps-1) is above ``t_sg``. Two ways to inject it (``injection``):

``posterior_mean`` (default; the official code, which produced the paper's numbers)
    x_{t-1} += lam * s_t * g_t after the scheduler step. Adding to x_{t-1} equals adding to its
    posterior mean, since the step's noise is additive. DDPM: s_t = sigma_t, the step's own
    standard deviation (DiT's learned one when the model predicts variance). DDIM (eta = 0) has
    sigma_t = 0, and the official SD variant scales by sqrt(alpha_bar_t) instead (REFERENCE §1);
    so does this code.

``eps`` (paper eq. 6 / Algorithm 1: guidance added to eps before the scheduler update)
    Since x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), shifting eps by d moves x0_hat
    by -sqrt(1 - abar_t) / sqrt(abar_t) * d. Eq. 6 read literally, eps_hat = eps + lam * sigma_t
    * g_t, therefore moves x0_hat *away* from the mode (by lam * sigma_t * sqrt(1-abar)/sqrt(abar)
    * g_t). We flip the sign so that it pulls toward the mode, as classifier guidance does
    (Dhariwal & Nichol, Alg. 2: eps_hat = eps - sqrt(1 - abar_t) * grad log p, with the
    "gradient" g_t). For sigma_t we take the marginal noise std sqrt(1 - abar_t) (the sigma_t of
    x_t = alpha_t x0 + sigma_t eps, and that algorithm's scale): DDIM's step std is 0 at eta = 0,
    which would switch eq. 6 off in Algorithm 1.

        eps_hat = eps_cfg - lam * sqrt(1 - abar_t) * g_t   ->   x0_hat += lam * (1 - abar_t) /
                                                                  sqrt(abar_t) * g_t

    Relation to ``posterior_mean`` under DDPM: the posterior mean is
    mu = (x_t - beta_t / sqrt(1 - abar_t) * eps) / sqrt(alpha_t), so an eps shift d moves mu by
    -beta_t / (sqrt(alpha_t) sqrt(1 - abar_t)) * d. The posterior-mean shift lam * sigma_t * g_t
    is the eps shift d = -lam * sigma_t * sqrt(alpha_t) sqrt(1 - abar_t) / beta_t * g_t; the
    ``eps`` mode's shift of mu is lam * beta_t / sqrt(alpha_t) * g_t, weaker at low noise
    (beta_t = 1 - abar_t / abar_{t-1} of the spaced schedule; sigma_t ~ sqrt(beta_t) >> beta_t).
    Pixel-space schedules clip x0, so the eps route is linear only away from the clip; DDIM
    there re-derives eps from the clipped x0 (``ddcore.sampling.step_options``), else a
    clipped x0 would leave only the direction term, which moves x_{t-1} away from the mode.
"""

from __future__ import annotations

import torch

from ddcore.errors import UserError
from ddcore.sampling import StepContext

INJECTIONS = ("posterior_mean", "eps")


def check_injection(injection: str) -> str:
    if injection not in INJECTIONS:
        raise UserError(f"unknown method.injection {injection!r} (use one of: "
                        f"{', '.join(INJECTIONS)}; posterior_mean reproduces the paper's numbers)")
    return injection


class ModeGuidance:
    """Pulls sample j toward mode j while the step index is above t_sg (see module docstring)."""

    def __init__(self, modes: torch.Tensor, lam: float, t_sg: int,
                 injection: str = "posterior_mean"):
        self.modes = modes
        self.lam = float(lam)
        self.t_sg = int(t_sg)
        self.injection = check_injection(injection)

    def subset(self, start: int, n: int) -> "ModeGuidance":
        """Guidance for samples start..start+n of the class (when a class is sampled in chunks)."""
        return ModeGuidance(self.modes[start:start + n], self.lam, self.t_sg, self.injection)

    def active(self, ctx: StepContext) -> bool:
        return self.lam != 0.0 and ctx.index > self.t_sg

    def pull(self, ctx: StepContext) -> torch.Tensor:
        """g_t = m - x0_hat."""
        return self.modes.to(ctx.x0_hat.device, ctx.x0_hat.dtype) - ctx.x0_hat

    def adjust_eps(self, eps: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        if self.injection != "eps" or not self.active(ctx):
            return eps
        # eq. 6 with the sign that pulls x0_hat toward the mode (see the module docstring)
        return eps - self.lam * (1 - ctx.alpha_bar).sqrt() * self.pull(ctx)

    def adjust_prev(self, x_prev: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        if self.injection != "posterior_mean" or not self.active(ctx):
            return x_prev
        scale = ctx.alpha_bar.sqrt() if ctx.sampler == "ddim" else ctx.sigma
        return x_prev + self.lam * scale * self.pull(ctx)
