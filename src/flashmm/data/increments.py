"""Infer a market's tick and lot size from the prices and sizes it publishes."""

from __future__ import annotations

import math

import numpy as np

MAX_DECIMALS = 12


class IncrementError(ValueError):
    """No grid could be inferred (no positive values, or more than MAX_DECIMALS decimals)."""


def infer_increment(values: np.ndarray, what: str = "values") -> float:
    """The coarsest power-of-ten grid (1, 0.1, 0.01, ...) on which every value sits.

    Zeros are on every grid and are ignored. It is a lower bound on the real grid
    (a sample may happen to use only even ticks), so pass as much data as is cheap.
    """
    v = np.abs(np.asarray(values, dtype=np.float64).ravel())
    v = v[np.isfinite(v) & (v > 0)]
    if v.size == 0:
        raise IncrementError(f"cannot infer an increment: no positive {what}")
    for decimals in range(MAX_DECIMALS + 1):
        scaled = v * 10.0**decimals
        if np.all(np.abs(scaled - np.round(scaled)) <= 1e-6 + 1e-12 * scaled):
            return float(f"1e-{decimals}")
    raise IncrementError(f"{what} have more than {MAX_DECIMALS} decimals; pass the size explicitly")


def decimals_of(step: float) -> int:
    """Digits after the point needed to write multiples of ``step`` exactly (0.01 -> 2)."""
    return max(0, math.ceil(-math.log10(step) - 1e-9))
