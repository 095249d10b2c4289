"""The process harness: time one artifact at every batch size, here or in a fresh Python process.

`measure_artifact` loads one runner and times it at each batch size with the one input every
backend gets (`fopt.artifacts.Feed.random`), returning plain dicts (samples, stop reason, timer, host-to-device
copy, page faults) that cross a process boundary as JSON. `measure_in_subprocess` runs the same
in a new interpreter (``python -m fopt.bench.measure.harness --worker SPEC OUT``), so that the
bench can report the spread between processes (README, "Measuring honestly"). Nothing here
estimates: a failure is recorded in the row dicts, never raised.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fopt.bench.measure.faults import faults_per_run
from fopt.errors import one_line
from fopt.runtime import open_runner
from fopt.runtime.timing import (
    Clock,
    CudaEventTimer,
    StopRule,
    WallTimer,
    get_clock,
    measure,
    summarize,
)

INPUT_SEED = 0
WORKER_MODULE = "fopt.bench.measure.harness"
# Runners whose CUDA work is timed with CUDA events; the others (ONNX Runtime) by the wall clock
# around a synchronised call.
_CUDA_EVENT_BACKENDS = ("torch-eager", "torchscript", "tensorrt")


def rule_dict(rule: StopRule) -> dict[str, Any]:
    """`rule` as JSON-ready keyword arguments of `StopRule`."""
    return dict(rule.__dict__)


def measure_artifact(path: str | Path, *, device: str, batch_sizes: Sequence[int], threads: int,
                     rule: StopRule, clock: Clock | str = "wall",
                     card: dict[str, Any] | None = None, runtime: str | None = None) -> list[dict[str, Any]]:
    """Measure one artifact at every batch size in this process; one dict per batch size.

    Each dict has ``batch_size``, ``status``, ``error`` and, when it worked, ``samples_s``,
    ``stop_reason``, ``warmup_iters``, ``timer``, ``h2d_ms``, ``page_faults``, ``backend``,
    ``precision``, ``runtime``, ``execution`` (what the runtime ran with). `runtime` None is the
    format's default runtime. `card` describes a model fopt did not make (`fopt.describe`).
    """

    clock_label = clock if isinstance(clock, str) else "custom-clock"
    clock = get_clock(clock)
    meta: dict[str, Any] = {}
    try:
        runner = open_runner(path, device=device, threads=threads, card=card, runtime=runtime)
        meta = {"backend": runner.backend, "precision": runner.precision, "runtime": runner.runtime}
        runner.load()
        meta["execution"] = runner.execution
    except Exception as e:  # recorded in every row of this artifact; the run goes on
        return [{"batch_size": b, "status": "error", "error": one_line(e), **meta} for b in batch_sizes]
    out = []
    try:
        for b in batch_sizes:
            row: dict[str, Any] = {"batch_size": b, **meta}
            try:
                row.update(_measure_batch(runner, runner.feed.random(b, INPUT_SEED), rule, clock, clock_label))
            except Exception as e:  # one failing row is recorded; the others still run
                row.update(status="error", error=one_line(e))
            out.append(row)
    finally:
        runner.close()
    return out


def _measure_batch(runner: Any, host: np.ndarray, rule: StopRule, clock: Clock, clock_label: str) -> dict[str, Any]:
    """One batch on a loaded runner: the timed loop, then (outside it) copies and page faults."""
    h2d_ms = _h2d_ms(runner, host, clock) if runner.device == "cuda" else None
    prepared = runner.prepare(host)
    step = lambda: runner.run_prepared(prepared)  # noqa: E731 - the timed call
    if runner.device == "cuda" and runner.backend in _CUDA_EVENT_BACKENDS:
        timer, timer_name = CudaEventTimer(step), "cuda-events"
    else:
        timer, timer_name = WallTimer(step, runner.synchronize, clock), clock_label
    loop = measure(timer, rule, clock)
    faults = faults_per_run(step) if runner.device == "cpu" else None
    return {"status": "ok", "error": None, "samples_s": loop.samples_s, "stop_reason": loop.stop_reason,
            "warmup_iters": loop.warmup_iters, "timer": timer_name, "h2d_ms": h2d_ms, "page_faults": faults}


def _h2d_ms(runner: Any, host: np.ndarray, clock: Clock, iters: int = 20) -> float:
    """Median time of runner.prepare (host -> device copy) + synchronize, in ms."""
    times = []
    for _ in range(iters):
        t0 = clock()
        runner.prepare(host)
        runner.synchronize()
        times.append(clock() - t0)
    return summarize(times).p50


def measure_in_subprocess(path: str, *, device: str, batch_sizes: Sequence[int], threads: int,
                          rule: StopRule, clock: str = "wall",
                          card: dict[str, Any] | None = None, runtime: str | None = None) -> list[dict[str, Any]]:
    """`measure_artifact` in a fresh Python process; the same dicts back.

    A process that dies or writes nothing gives an error row per batch size, with the last line
    of its stderr."""
    with tempfile.TemporaryDirectory(prefix="fopt-bench-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps({"path": str(path), "device": device, "batch_sizes": list(batch_sizes),
                                         "threads": threads, "rule": rule_dict(rule), "clock": clock,
                                         "card": card, "runtime": runtime}))
        proc = subprocess.run([sys.executable, "-m", WORKER_MODULE, "--worker", str(spec_path), str(out_path)],
                              capture_output=True, text=True)
        if proc.returncode != 0 or not out_path.exists():
            lines = [ln for ln in (proc.stderr or "").strip().splitlines() if ln.strip()]
            msg = lines[-1] if lines else f"worker exited with status {proc.returncode}"
            return [{"batch_size": b, "status": "error", "error": f"measuring process failed: {msg}"}
                    for b in batch_sizes]
        return json.loads(out_path.read_text())


def _worker_main(spec_path: str, out_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    rows = measure_artifact(spec["path"], device=spec["device"], batch_sizes=spec["batch_sizes"],
                            threads=spec["threads"], rule=StopRule(**spec["rule"]), clock=spec["clock"],
                            card=spec.get("card"), runtime=spec.get("runtime"))
    Path(out_path).write_text(json.dumps(rows))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        sys.exit(_worker_main(sys.argv[2], sys.argv[3]))
    print(f"usage: python -m {WORKER_MODULE} --worker SPEC.json OUT.json", file=sys.stderr)
    sys.exit(2)
