"""`summarize` pinned on known samples with outliers: every statistic comes from the kept samples.

The expected values are derived here with numpy from the samples the clipping must keep (by
construction: the outliers are far outside 3 sigma, every base sample well inside it; both are
checked below, so a change of the data cannot silently make the pins meaningless).
"""

from __future__ import annotations

import numpy as np
import pytest

from fopt.runtime.timing import summarize

QS = (50, 90, 99)


def _base_ms(n: int = 200, seed: int = 0) -> np.ndarray:
    # 10 ms +- 1 ms, uniform: bounded at ~1.7 std from the mean, so no round of 3-sigma clipping
    # can touch a base sample once the outliers are gone. n = 200 puts the p50/p90/p99 positions
    # (n-1)*q/100 = 99.5, 179.1, 197.01 between two samples: the interpolation matters.
    return 10.0 + np.random.default_rng(seed).uniform(-1.0, 1.0, n)


def _shuffled_seconds(ms: np.ndarray, seed: int = 1) -> list[float]:
    """The samples in a random order (outliers mid-run), in seconds as the timing loop gives them."""
    return (np.random.default_rng(seed).permutation(ms) / 1e3).tolist()


def _assert_stats_of(kept_ms: np.ndarray, stats, n_clipped: int) -> None:
    for q in QS:
        # numpy's default percentile method is linear interpolation between closest ranks
        assert getattr(stats, f"p{q}") == pytest.approx(float(np.percentile(kept_ms, q)), rel=1e-9), q
    assert stats.mean == pytest.approx(float(kept_ms.mean()), rel=1e-9)
    assert stats.std == pytest.approx(float(kept_ms.std(ddof=1)), rel=1e-9)  # sample std
    assert stats.min == pytest.approx(float(kept_ms.min()), rel=1e-12)
    assert stats.max == pytest.approx(float(kept_ms.max()), rel=1e-12)
    assert (stats.n, stats.n_clipped) == (len(kept_ms), n_clipped)


def test_percentiles_mean_std_come_from_the_clipped_samples():
    base = _base_ms()
    outliers = np.array([100.0, 100.0, 100.0])           # three 100 ms hiccups
    everything = np.concatenate([base, outliers])

    # Preconditions of the construction (numpy, independent of fopt): round 1 of 3-sigma clipping
    # drops exactly the outliers, and round 2 on the base samples drops nothing.
    mu, sd = everything.mean(), everything.std(ddof=1)
    assert np.all(np.abs(outliers - mu) > 3 * sd) and np.all(np.abs(base - mu) <= 3 * sd)
    assert np.all(np.abs(base - base.mean()) <= 3 * base.std(ddof=1))

    stats = summarize(_shuffled_seconds(everything))
    _assert_stats_of(base, stats, n_clipped=3)
    # The unclipped tail would put p99 near 98 ms; the p99 of the kept samples is under 11 ms.
    assert float(np.percentile(everything, 99)) > 50 and stats.p99 < 11
    # ... and the p90 of all samples differs from the p90 of the kept ones, by more than
    # rounding, so taking p90 before clipping is caught too.
    assert abs(float(np.percentile(everything, 90)) - stats.p90) > 1e-3


def test_clipping_iterates_until_nothing_more_is_dropped():
    """Two 20 ms samples hide behind the 100 ms outliers in round 1 (the outliers inflate the std)
    and are dropped in round 2: one round of clipping is not enough."""
    base = _base_ms(seed=2)
    hidden = np.array([20.0, 20.0])
    outliers = np.array([100.0, 100.0, 100.0])
    everything = np.concatenate([base, hidden, outliers])

    mu1, sd1 = everything.mean(), everything.std(ddof=1)
    assert np.all(np.abs(outliers - mu1) > 3 * sd1)          # round 1 drops the outliers only
    assert np.all(np.abs(hidden - mu1) <= 3 * sd1)
    after1 = np.concatenate([base, hidden])
    mu2, sd2 = after1.mean(), after1.std(ddof=1)
    assert np.all(np.abs(hidden - mu2) > 3 * sd2)            # round 2 drops the hidden ones
    assert np.all(np.abs(base - mu2) <= 3 * sd2)
    assert np.all(np.abs(base - base.mean()) <= 3 * base.std(ddof=1))  # round 3 drops nothing

    stats = summarize(_shuffled_seconds(everything, seed=3))
    _assert_stats_of(base, stats, n_clipped=5)


def test_clip_sigma_is_honoured():
    """A looser clip keeps what a 3-sigma clip drops: with clip_sigma=20 nothing is an outlier
    (100 ms is within 20 std of the mean of all samples), so the statistics are those of all."""
    base = _base_ms(seed=4)
    everything = np.concatenate([base, [100.0, 100.0, 100.0]])
    assert np.all(np.abs(everything - everything.mean()) <= 20 * everything.std(ddof=1))
    stats = summarize(_shuffled_seconds(everything, seed=5), clip_sigma=20.0)
    _assert_stats_of(everything, stats, n_clipped=0)
