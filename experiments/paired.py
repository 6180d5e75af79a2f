"""The paired test both reports state: a 95% confidence interval for the mean of per-seed
differences, Student t with n - 1 degrees of freedom (``summarize.py --baseline`` and the
reference experiment's claims)."""

from __future__ import annotations

import math
import statistics


def t_interval(diffs: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """mean ± t(1 - (1 - level)/2, n-1) · sd/√n; None when n < 2 (no spread to estimate)."""
    if len(diffs) < 2:
        return None
    from scipy.stats import t  # scipy comes with scikit-learn

    mean = statistics.fmean(diffs)
    half = float(t.ppf(0.5 + level / 2, len(diffs) - 1)) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return mean - half, mean + half
