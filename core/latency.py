"""The one latency summary every measurement reports: percentiles (and the maximum) of the
finite samples, NaN where there are none, so a run that measured nothing says so instead of
failing."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

SUMMARY_PERCENTILES = (50, 99)


def finite(samples: ArrayLike) -> np.ndarray:
    """The finite samples, as a flat float64 array."""
    values = np.asarray(samples, dtype=np.float64).ravel()
    return values[np.isfinite(values)]


def percentile(samples: ArrayLike, q: float) -> float:
    """The q-th percentile of the finite samples (NaN when there are none)."""
    values = finite(samples)
    return float(np.percentile(values, q)) if len(values) else math.nan


def percentiles(samples: ArrayLike, qs: Sequence[float] = SUMMARY_PERCENTILES
                ) -> dict[str, float]:
    """{"p50": …, "p99": …} (one key per `qs`, named p<q>) of the finite samples."""
    values = finite(samples)
    if not len(values):
        return {f"p{q:g}": math.nan for q in qs}
    found = np.percentile(values, list(qs))
    return {f"p{q:g}": float(v) for q, v in zip(qs, found, strict=True)}


def summarize(samples: ArrayLike, qs: Sequence[float] = SUMMARY_PERCENTILES) -> dict[str, float]:
    """`percentiles` and the largest sample: {"p50", "p99", "max"}."""
    values = finite(samples)
    return {**percentiles(values, qs), "max": float(values.max()) if len(values) else math.nan}
