"""The summary every bench reports for a list of per-image values: mean, median and the 95 % percentile-
bootstrap interval of the mean (the images resampled with replacement), so a reader sees the spread
behind a mean, not one lucky image."""

from __future__ import annotations

import numpy as np

RESAMPLES = 2000


def summary(values: list[float], rng: np.random.Generator, resamples: int = RESAMPLES, digits: int = 3,
            count: bool = True) -> dict:
    """{"mean", "median", "ci95": [low, high]} rounded to ``digits``, with "n" when ``count``; an empty
    list gives {"n": 0}. The interval is the 2.5 and 97.5 % quantiles of ``resamples`` bootstrap means."""
    v = np.asarray(values, np.float64)
    if not len(v):
        return {"n": 0}
    means = v[rng.integers(0, len(v), (resamples, len(v)))].mean(1)
    result = {"mean": round(float(v.mean()), digits), "median": round(float(np.median(v)), digits),
              "ci95": [round(float(np.quantile(means, 0.025)), digits),
                       round(float(np.quantile(means, 0.975)), digits)]}
    return {**result, "n": len(v)} if count else result
