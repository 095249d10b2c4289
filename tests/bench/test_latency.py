"""The timing harness: statistics and stop logic on a fake clock, row failures on real artifacts."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from fopt.bench.latency import (LatencyStats, StopRule, WallTimer, combine, measure, percentile,
                                sigma_clip, summarize, throughput_ips)
from fopt.errors import UsageError


class FakeClock:
    """A clock that only moves when a fake step says how long it took."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def step(self, durations):
        it = iter(durations)
        calls = {"n": 0}

        def run():
            calls["n"] += 1
            self.t += next(it)

        return run, calls


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


def test_measure_artifact_on_a_fake_clock(bench_dir):
    """The real runner executes; only time is fake, so the statistics are exact."""
    from fopt.bench.run import measure_artifact

    class TickingClock(FakeClock):
        def __call__(self):  # every read advances 0.5 ms; a timed iteration is two reads
            self.t += 0.0005
            return self.t

    rows = measure_artifact(bench_dir / "tiny.onnx", device="cpu", batch_sizes=[1, 2], threads=1,
                            rule=StopRule(min_time_s=10.0, warmup_iters=1, warmup_s=0.0), clock=TickingClock())
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert rows[0]["backend"] == "onnxruntime" and rows[0]["precision"] == "fp32"
    assert rows[0]["stop_reason"] == "stable" and len(rows[0]["samples_s"]) == 80
    assert rows[0]["page_faults"] is not None and rows[0]["page_faults"] >= 0  # counted after the timed loop
    assert rows[0]["samples_s"] == [pytest.approx(0.0005)] * 80


def test_failing_rows_are_recorded_and_the_run_goes_on(bench_dir):
    from fopt.bench.run import bench_artifacts

    res = bench_artifacts([bench_dir / "corrupt.onnx", bench_dir / "tiny_static.onnx", bench_dir / "tiny.onnx"],
                          batch_sizes=[1, 3], threads=1, estimate=False,
                          rule=StopRule(min_time_s=0.02, warmup_iters=1, warmup_s=0.0))
    status = {(r.artifact.rsplit("/", 1)[-1], r.batch_size): r for r in res.results}
    assert status[("corrupt.onnx", 1)].status == "error" and status[("corrupt.onnx", 3)].status == "error"
    assert "corrupt.onnx" in status[("corrupt.onnx", 1)].error
    assert status[("tiny_static.onnx", 1)].status == "ok"
    assert status[("tiny_static.onnx", 3)].status == "error"  # the static graph takes batch 1 only
    assert status[("tiny.onnx", 1)].status == "ok" and status[("tiny.onnx", 3)].status == "ok"
    assert len(res.failed) == 3
    d = status[("tiny_static.onnx", 3)].to_dict()
    assert d["latency_ms"] is None and d["error"]


def test_processes_run_in_rounds_over_artifacts_and_pool_per_artifact(monkeypatch):
    import fopt.bench.run as run

    calls = []

    def fake(path, *, device, batch_sizes, threads, rule, clock):
        calls.append(Path(path).name)
        k = sum(c == Path(path).name for c in calls)  # this artifact's k-th process
        ms = {"a.onnx": 1.0, "b.onnx": 4.0}[Path(path).name] * (2 if k == 2 else 1)  # one slow process
        return [{"batch_size": b, "status": "ok", "error": None, "backend": "onnxruntime", "precision": "fp32",
                 "samples_s": [ms / 1e3] * 10, "stop_reason": "time", "warmup_iters": 1, "timer": "wall",
                 "h2d_ms": None} for b in batch_sizes]

    monkeypatch.setattr(run, "_measure_in_subprocess", fake)
    res = run.bench_artifacts(["x/a.onnx", "x/b.onnx"], batch_sizes=[1], threads=1, processes=3, estimate=False)
    assert calls == ["a.onnx", "b.onnx"] * 3
    a, b = res.results
    assert a.to_dict()["process_p50_ms"] == pytest.approx([1.0, 2.0, 1.0])
    assert b.to_dict()["process_p50_ms"] == pytest.approx([4.0, 8.0, 4.0])
    assert a.to_dict()["spread_pct"] == pytest.approx(100.0) and a.p50 == pytest.approx(1.0)


def test_every_backend_gets_the_same_input():
    from fopt.bench.run import make_input

    a, b = make_input(3, 8, 2), make_input(3, 8, 2)
    assert a.dtype == np.float32 and a.shape == (2, 3, 8, 8)
    assert np.array_equal(a, b)


def test_stats_to_dict_round_trip():
    s = summarize([0.001, 0.002])
    assert LatencyStats(**s.to_dict()) == s


def test_thread_cpu_clock_needs_one_thread():
    from fopt.bench.latency import CLOCKS, check_clock, get_clock

    assert get_clock("thread-cpu") is CLOCKS["thread-cpu"]
    check_clock("thread-cpu", 1, "cpu")
    check_clock("wall", 4, "cuda")
    with pytest.raises(UsageError, match="--threads 1"):
        check_clock("thread-cpu", 2, "cpu")
    with pytest.raises(UsageError, match="unknown clock"):
        get_clock("sundial")


def test_thread_cpu_clock_ignores_sleeping():
    import time

    from fopt.bench.latency import get_clock

    clock = get_clock("thread-cpu")
    t = WallTimer(lambda: time.sleep(0.05), clock=clock)()
    assert t < 0.01  # 50 ms of wall time, almost no CPU


def test_ort_profile_parsing_with_run_scaling():
    """Synthetic profile: 3 runs x 2 nodes; the first run is warm-up and dropped."""
    from fopt.bench.profile import parse_ort_profile

    events = []
    for r, (a_us, b_us) in enumerate([(900, 900), (100, 300), (200, 600)]):
        ts = r * 10_000
        events.append({"cat": "Session", "name": "model_run", "ts": ts, "dur": a_us + b_us + 10})
        events.append({"cat": "Node", "name": "a_kernel_time", "ts": ts + 1, "dur": a_us, "args": {"op_name": "Relu"}})
        events.append({"cat": "Node", "name": "a_fence_before", "ts": ts + 1, "dur": 0, "args": {}})
        events.append({"cat": "Node", "name": "b_kernel_time", "ts": ts + 2 + a_us, "dur": b_us, "args": {"op_name": "Conv"}})
    per_node, runs = parse_ort_profile(events, skip_runs=1, quantile=50.0)
    assert set(per_node) == {"a", "b"}
    assert per_node["a"]["ms"] == pytest.approx(0.15) and per_node["b"]["ms"] == pytest.approx(0.45)
    assert runs == pytest.approx([0.41, 0.81])
    # second kept run got only half of the CPU: its node times count half
    scaled, _ = parse_ort_profile(events, skip_runs=1, quantile=None, run_scale=[1.0, 1.0, 0.5])
    assert scaled["a"]["ms"] == pytest.approx((0.1 + 0.1) / 2)
    assert scaled["b"]["ms"] == pytest.approx((0.3 + 0.3) / 2)
