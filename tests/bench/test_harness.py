"""The bench's process harness: rows measured through runners, in rounds over processes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from timing_helpers import FakeClock

from fopt.errors import InputError
from fopt.runtime.timing import StopRule


def test_measure_artifact_on_a_fake_clock(bench_dir):
    """The real runner executes; only time is fake, so the statistics are exact."""
    from fopt.bench.measure.harness import measure_artifact

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

    def fake(path, *, device, batch_sizes, threads, rule, clock, card=None, runtime=None):
        calls.append(Path(path).name)
        k = sum(c == Path(path).name for c in calls)  # this artifact's k-th process
        ms = {"a.onnx": 1.0, "b.onnx": 4.0}[Path(path).name] * (2 if k == 2 else 1)  # one slow process
        return [{"batch_size": b, "status": "ok", "error": None, "backend": "onnxruntime", "precision": "fp32",
                 "samples_s": [ms / 1e3] * 10, "stop_reason": "time", "warmup_iters": 1, "timer": "wall",
                 "h2d_ms": None} for b in batch_sizes]

    monkeypatch.setattr(run, "measure_in_subprocess", fake)
    res = run.bench_artifacts(["x/a.onnx", "x/b.onnx"], batch_sizes=[1], threads=1, processes=3, estimate=False)
    assert calls == ["a.onnx", "b.onnx"] * 3
    a, b = res.results
    assert a.to_dict()["process_p50_ms"] == pytest.approx([1.0, 2.0, 1.0])
    assert b.to_dict()["process_p50_ms"] == pytest.approx([4.0, 8.0, 4.0])
    assert a.to_dict()["spread_pct"] == pytest.approx(100.0) and a.p50 == pytest.approx(1.0)


def test_every_backend_gets_the_same_input():
    from fopt.artifacts import Feed

    a, b = Feed((None, 3, 8, 8)).random(2), Feed((None, 3, 8, 8)).random(2)
    assert a.dtype == np.float32 and a.shape == (2, 3, 8, 8)
    assert np.array_equal(a, b)
    ints = Feed((None, 8, 8, 3), "uint8").random(1)
    assert ints.dtype == np.uint8 and ints.shape == (1, 8, 8, 3) and ints.max() > 0
    with pytest.raises(InputError, match="--input-shape"):
        Feed((None, 3, None, None)).random(1)


def test_ort_profile_parsing_with_run_scaling():
    """Synthetic profile: 3 runs x 2 nodes; the first run is warm-up and dropped."""
    from fopt.bench.measure.profile import parse_ort_profile

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
