"""The timing harness: statistics and stop logic on a fake clock, row failures on real artifacts."""

from __future__ import annotations

import math

import numpy as np
import pytest
from timing_helpers import FakeClock

from fopt.errors import UsageError
from fopt.runtime.timing import (
    LatencyStats,
    StopRule,
    WallTimer,
    combine,
    measure,
    percentile,
    sigma_clip,
    summarize,
    throughput_ips,
)


def test_percentile_matches_numpy():
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 100):
        xs = sorted(rng.random(n).tolist())
        for q in (0, 10, 50, 90, 99, 100):
            assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))
    with pytest.raises(ValueError):
        percentile([], 50)


def test_summary_statistics_in_ms():
    s = summarize([0.001, 0.002, 0.003, 0.004])
    assert s.p50 == pytest.approx(2.5)
    assert s.mean == pytest.approx(2.5)
    assert s.std == pytest.approx(math.sqrt(sum((x - 2.5) ** 2 for x in (1, 2, 3, 4)) / 3))
    assert (s.min, s.max, s.n, s.n_clipped) == (1.0, 4.0, 4, 0)
    assert s.latency_ms() == {"p50": s.p50, "p90": s.p90, "p99": s.p99, "mean": s.mean, "std": s.std}


def test_outlier_is_clipped_before_statistics():
    samples = [0.010 + 0.0001 * (i % 5) for i in range(60)] + [0.5]  # one 500 ms hiccup
    s = summarize(samples)
    assert s.n_clipped == 1 and s.n == 60
    assert s.max < 11  # ms: the hiccup is gone from max, mean and p99
    assert s.mean == pytest.approx(10.2, abs=0.05)


def test_sigma_clip_keeps_at_least_half_and_constant_data():
    assert sigma_clip([1.0] * 10) == [1.0] * 10
    bimodal = [1.0] * 10 + [2.0] * 10
    assert len(sigma_clip(bimodal)) == 20


def test_throughput_is_items_per_second_at_p50():
    assert throughput_ips(8, 4.0) == pytest.approx(2000.0)


def test_stable_median_stops_early():
    clock = FakeClock()
    step, calls = clock.step([0.010] * 10_000)
    rule = StopRule(min_time_s=100.0, warmup_iters=3, warmup_s=0.0)
    res = measure(WallTimer(step, clock=clock), rule, clock)
    # check points 20 (first), 40 (stable 1), 80 (stable 2) -> stop at 80 samples
    assert res.stop_reason == "stable" and len(res.samples_s) == 80
    assert res.warmup_iters == 3 and calls["n"] == 83
    assert res.stats().p50 == pytest.approx(10.0)


def test_drifting_median_stops_on_time_budget():
    clock = FakeClock()
    durations = [0.001 * (1.01 ** i) for i in range(10_000)]  # grows 1% per call: never stable
    step, _ = clock.step(durations)
    rule = StopRule(min_time_s=0.5, warmup_iters=0, warmup_s=0.0, first_check=5)

    def timed():
        t0 = clock()
        step()
        return clock() - t0

    res = measure(timed, rule, clock)
    assert res.stop_reason == "time"
    assert sum(res.samples_s) == pytest.approx(0.5, abs=max(res.samples_s))


def test_min_iters_even_past_the_budget_and_max_iters_cap():
    clock = FakeClock()
    step, _ = clock.step([1.0] * 100)
    timed = WallTimer(step, clock=clock)
    res = measure(timed, StopRule(min_time_s=0.5, warmup_iters=1, warmup_s=0.0, min_iters=5), clock)
    assert len(res.samples_s) == 5 and res.stop_reason == "time"
    assert res.samples_s == [1.0] * 5
    step2, _ = clock.step([0.001 * (1 + (i % 7)) for i in range(1000)])
    res2 = measure(WallTimer(step2, clock=clock),
                   StopRule(min_time_s=1e6, warmup_iters=0, warmup_s=0.0, max_iters=30, rel_tol=0.0), clock)
    assert len(res2.samples_s) == 30 and res2.stop_reason == "max_iters"


def test_warmup_runs_both_iterations_and_time():
    clock = FakeClock()
    step, calls = clock.step([0.01] * 1000)
    res = measure(WallTimer(step, clock=clock),
                  StopRule(min_time_s=1e6, warmup_iters=2, warmup_s=0.095, min_iters=5, max_iters=5), clock)
    assert res.warmup_iters == 10  # 0.095 s of 10 ms calls
    assert calls["n"] == 15


def test_wall_timer_waits_for_sync():
    clock = FakeClock()
    seen = []
    t = WallTimer(lambda: seen.append("run"), sync=lambda: (seen.append("sync"), setattr(clock, "t", clock.t + 0.2)),
                  clock=clock)
    assert t() == pytest.approx(0.2)
    assert seen == ["run", "sync"]


def test_combine_reports_spread_between_processes():
    a = [0.010] * 20
    b = [0.012] * 20
    s = combine([a, b], stop_reasons=["stable", "time"])
    assert s.process_p50 == pytest.approx([10.0, 12.0])
    assert s.spread_pct == pytest.approx(20.0)
    assert s.n == 40 and s.stop_reason == "stable,time"


def test_combine_weighs_every_process_the_same():
    fast = [0.001] * 90           # one process three times as fast leaves three times the samples
    slow = [0.004] * 30
    s = combine([fast, slow, slow])
    assert s.n == 90 and s.p50 == pytest.approx(4.0)   # two processes of three were slow
    assert s.process_p50 == pytest.approx([1.0, 4.0, 4.0])


@pytest.mark.parametrize("kwargs", [{"min_time_s": 0}, {"min_iters": 0}, {"min_iters": 5, "max_iters": 2},
                                    {"warmup_iters": -1}])
def test_bad_stop_rule_is_a_usage_error(kwargs):
    with pytest.raises(UsageError):
        StopRule(**kwargs)


def test_stats_to_dict_round_trip():
    s = summarize([0.001, 0.002])
    assert LatencyStats(**s.to_dict()) == s


def test_thread_cpu_clock_needs_one_thread():
    from fopt.runtime.timing import CLOCKS, check_clock, get_clock

    assert get_clock("thread-cpu") is CLOCKS["thread-cpu"]
    check_clock("thread-cpu", 1, "cpu")
    check_clock("wall", 4, "cuda")
    with pytest.raises(UsageError, match="--threads 1"):
        check_clock("thread-cpu", 2, "cpu")
    with pytest.raises(UsageError, match="unknown clock"):
        get_clock("sundial")


def test_thread_cpu_clock_ignores_sleeping():
    import time

    from fopt.runtime.timing import get_clock

    clock = get_clock("thread-cpu")
    t = WallTimer(lambda: time.sleep(0.05), clock=clock)()
    assert t < 0.01  # 50 ms of wall time, almost no CPU


