"""The records of a bench run: one `BenchRow` per (artifact, runtime) x batch size, and the `BenchResult`.

A row holds what was measured (the pooled latency statistics, host-to-device copy, page faults)
and the estimates put beside it (``naive``, ``roofline``, ``calibrated``, with notes saying why
one is missing). ``to_dict`` is the JSON form scripts and plots read; its keys are stable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fopt.bench.costmodel.predict import error_pct
from fopt.errors import one_line
from fopt.runtime.timing import throughput_ips

ESTIMATE_KEYS = ("naive", "roofline", "calibrated")


@dataclass
class BenchRow:
    """One artifact x batch size. ``to_dict`` gives the JSON keys scripts rely on first."""
    artifact: str
    batch_size: int
    backend: str | None = None
    precision: str | None = None
    runtime: str | None = None             # onnxruntime, openvino, torch, tensorrt (`fopt.runtime.RUNTIMES`)
    execution: dict[str, Any] | None = None  # what the runtime ran with (e.g. OpenVINO's inference precision)
    device: str = "cpu"
    threads: int | None = None
    status: str = "ok"
    error: str | None = None
    stats: Any = None                      # LatencyStats
    h2d_ms: float | None = None            # CUDA: host-to-device copy of the batch, timed apart
    page_faults: float | None = None       # CPU: minor page faults per call (median; `fopt.bench.measure.faults`)
    timer: str = "wall"
    processes: int = 1
    estimate_ms: dict[str, float | None] = field(default_factory=lambda: dict.fromkeys(ESTIMATE_KEYS))
    # 80% band of each estimate that has one, [low, high] ms (`fopt.bench.costmodel.bands`)
    estimate_band_ms: dict[str, list[float]] = field(default_factory=dict)
    estimate_notes: list[str] = field(default_factory=list)
    estimate_detail: dict[str, Any] = field(default_factory=dict)
    layers: list[dict[str, Any]] | None = None

    @property
    def p50(self) -> float | None:
        return self.stats.p50 if self.stats is not None else None

    def error_pct(self) -> dict[str, float | None]:
        return {k: error_pct(self.estimate_ms.get(k), self.p50) for k in ESTIMATE_KEYS}

    def fail(self, e: BaseException | str) -> "BenchRow":
        self.status = "error"
        self.error = e if isinstance(e, str) else one_line(e)
        return self

    def to_dict(self) -> dict[str, Any]:
        s = self.stats
        d: dict[str, Any] = {
            "artifact": self.artifact, "runtime": self.runtime, "backend": self.backend,
            "precision": self.precision, "execution": self.execution,
            "batch_size": self.batch_size,
            "latency_ms": s.latency_ms() if s is not None else None,
            "throughput_ips": throughput_ips(self.batch_size, s.p50) if s is not None else None,
            "estimate_ms": dict(self.estimate_ms), "error_pct": self.error_pct(),
            "estimate_band_ms": {k: list(v) for k, v in self.estimate_band_ms.items()
                                 if self.estimate_ms.get(k) is not None},
            "status": self.status, "error": self.error,
            "device": self.device, "threads": self.threads, "timer": self.timer,
            "h2d_ms": self.h2d_ms, "processes": self.processes, "page_faults_per_run": self.page_faults,
        }
        if s is not None:
            d.update({"min_ms": s.min, "max_ms": s.max, "n_samples": s.n, "n_clipped": s.n_clipped,
                      "stop_reason": s.stop_reason, "warmup_iters": s.warmup_iters,
                      "process_p50_ms": s.process_p50 or None, "spread_pct": s.spread_pct})
        d["estimate_notes"] = list(self.estimate_notes)
        if self.estimate_detail:
            d["estimate_detail"] = self.estimate_detail
        if self.layers is not None:
            d["layers"] = self.layers
        return d


@dataclass
class BenchResult:
    """A whole run: the machine, the settings, one row per artifact x batch size, and the
    calibration the estimates used (None when none was)."""
    machine: dict[str, Any]
    settings: dict[str, Any]
    results: list[BenchRow]
    calibration: dict[str, Any] | None = None

    @property
    def failed(self) -> list[BenchRow]:
        return [r for r in self.results if r.status != "ok"]

    def to_dict(self) -> dict[str, Any]:
        return {"machine": self.machine, "settings": self.settings, "calibration": self.calibration,
                "results": [r.to_dict() for r in self.results]}
