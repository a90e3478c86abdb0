"""The one summary every bench reports (bench/stats.py)."""

import numpy as np

from bench.stats import summary


def test_summary_interval_brackets_the_mean():
    rng = np.random.default_rng(0)
    stats = summary([1.0, 2.0, 3.0, 4.0, 10.0], rng)
    assert stats["mean"] == 4.0 and stats["median"] == 3.0 and stats["n"] == 5
    assert stats["ci95"][0] < 4.0 < stats["ci95"][1]
    assert summary([2.5] * 4, rng)["ci95"] == [2.5, 2.5]


def test_summary_rounding_count_and_empty_input():
    values = [1.23456, 2.34567, 9.87654]
    stats = summary(values, np.random.default_rng(1), resamples=500, digits=2, count=False)
    assert set(stats) == {"mean", "median", "ci95"} and stats["median"] == 2.35
    assert stats["mean"] == round(float(np.mean(values)), 2)
    assert summary([], np.random.default_rng(0)) == {"n": 0}
