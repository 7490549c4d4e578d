"""Statistics for evaluation reports."""

from __future__ import annotations

import math

import numpy as np


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (default 95%); (0, 1) for n = 0.

    Wilson, "Probable inference, the law of succession, and statistical inference", JASA 1927.
    """
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def percentile(values, q: float) -> float | None:
    """q-th percentile (0-100) of a sequence, or None when empty."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else None
