"""What each optimized artifact costs and gains: accuracy, macro-F1, size, a quick latency.

Accuracy goes through `fopt.evaluation.evaluate_artifact` (the artifact's own runner, the
validation split). Latency here is a *quick check*: batch 1, a few warm-up runs, then the median
of at most ~1 s of runs in this process. It is labelled as such everywhere; `fopt bench` is the
measurement harness (several processes, spread, stop rules). On a shared machine a quick check
can be off by tens of percent, so compare rows of one run, not numbers across runs.
"""

from __future__ import annotations

import statistics
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from fopt.artifacts import deployed_bytes
from fopt.evaluation import evaluate_artifact, paired_deltas
from fopt.runtime import open_runner
from fopt.runtime.onnxrt import ort_session
from fopt.runtime.timing import StopRule, WallTimer, measure

QUICK_LATENCY_LABEL = ("quick check: batch 1, median of <= 1 s of runs in one process "
                       "(use `fopt bench` for real numbers)")


def evaluate(path: Path, dataset: Path, device: str, threads: int | None, batch_size: int,
             card: dict[str, Any] | None = None) -> dict[str, Any]:
    r = evaluate_artifact(path, dataset, split="val", device=device, batch_size=batch_size, threads=threads,
                          card=card)
    return {"accuracy": r["accuracy"], "macro_f1": r["macro_f1"], "n": r["n"], "split": "val",
            "dataset": str(Path(dataset).resolve()), "device": device, "backend": r.get("backend"),
            "labels": r["labels"], "predictions": r["predictions"]}


PER_IMAGE = ("labels", "predictions")  # in `evaluate`'s result for paired intervals; too big for cards


def summary(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    """`evaluate`'s result without the per-image lists (what cards and result JSON keep)."""
    return None if metrics is None else {k: v for k, v in metrics.items() if k not in PER_IMAGE}


def quick_latency_ms(path: Path, device: str = "cpu", threads: int | None = None, budget_s: float = 1.0,
                     warmup: int = 3, min_iters: int = 5, max_iters: int = 200,
                     card: dict[str, Any] | None = None) -> dict[str, Any]:
    """Median batch-1 latency of `path` through its runner (see the module docstring)."""
    with open_runner(path, device=device, threads=threads, card=card) as runner:
        prepared = runner.prepare(runner.feed.random(1))
        rule = StopRule(min_time_s=budget_s, warmup_iters=warmup, warmup_s=0.0, min_iters=min_iters,
                        max_iters=max_iters)
        times = measure(WallTimer(lambda: runner.run_prepared(prepared), runner.synchronize), rule).samples_s
    return {"p50_ms": round(1000 * statistics.median(times), 3), "n": len(times), "batch": 1,
            "threads": threads, "device": device, "label": "quick"}


def ort_executed_ops(path: Path, threads: int | None = None) -> dict[str, int]:
    """Op counts of the graph ONNX Runtime (CPU) actually executes after its optimizations.

    This is where fused INT8 kernels (QLinearConv, QGemm) and the float islands that remain
    (DequantizeLinear -> float op -> QuantizeLinear) become visible.
    """
    import onnx

    with tempfile.TemporaryDirectory(prefix="fopt-ortopt-") as tmp:
        out = Path(tmp) / "executed.onnx"
        ort_session(path, threads=threads, optimized_model_path=out)
        model = onnx.load(str(out), load_external_data=False)
    return dict(Counter(n.op_type for n in model.graph.node).most_common())


INT8_KERNELS = ("QGemm", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear", "MatMulIntegerToFloat",
                "DynamicQuantizeMatMul", "QAttention", "NhwcMaxPool")
FLOAT_ISLAND_OPS = ("Conv", "Gemm", "MatMul", "Sigmoid", "Mul", "Add", "HardSigmoid", "HardSwish",
                    "Relu", "QuickGelu", "GlobalAveragePool", "BatchNormalization")


def executed_summary(ops: dict[str, int]) -> str:
    """One line: fused INT8 kernels vs float ops and Q/DQ left in the executed graph."""
    fused = {k: v for k, v in ops.items() if k.startswith("QLinear") or k in INT8_KERNELS}
    floats = {k: v for k, v in ops.items() if k in FLOAT_ISLAND_OPS}
    qdq = ops.get("QuantizeLinear", 0) + ops.get("DequantizeLinear", 0)
    f = ", ".join(f"{v} {k}" for k, v in fused.items()) or "none"
    fl = ", ".join(f"{v} {k}" for k, v in floats.items()) or "none"
    return f"int8 kernels: {f}; float ops: {fl}; Q/DQ left: {qdq}"


def ort_requantized(graph: dict[str, Any], executed: dict[str, int]) -> int:
    """Compute nodes that are float in the file (`graph`: `graph_summary`) but that ONNX Runtime
    executes as INT8 (`executed`: `ort_executed_ops`).

    ONNX Runtime's optimizer fuses DequantizeLinear -> Conv with float weights -> QuantizeLinear
    into a QLinearConv, quantizing the weights itself: a node left FP32 (--exclude, --keep-fp32,
    the precision search) whose input and output stay quantized for its neighbours still runs as
    INT8 there. Measured: resnet50 with its 31 pointwise convolutions left float executed 53
    QLinearConv, as many as all-INT8."""
    int8_kernels = sum(executed.get(op, 0) for op in ("QLinearConv", "QGemm", "QLinearMatMul"))
    return max(0, int8_kernels - sum(graph["quantized_ops"].values()))


def size_mb(path: Path) -> float:
    return round(deployed_bytes(path) / 1e6, 2)


def pct(x: float | None) -> float | None:
    return None if x is None or x != x else round(100.0 * x, 2)


def delta_pts(value: float | None, ref: float | None) -> float | None:
    if value is None or ref is None or value != value or ref != ref:
        return None
    return round(100.0 * (value - ref), 2)


# Printed columns (narrow enough for a terminal); JSON/CSV rows carry every field.
ROW_COLUMNS = ["label", "size_mb", "params", "accuracy_pct", "d_accuracy_pts", "d_accuracy_ci_pts", "macro_f1_pct",
               "d_macro_f1_pts", "latency_b1_ms", "speedup"]
ROW_HEADERS = {"label": "artifact", "size_mb": "MB", "params": "params", "accuracy_pct": "acc%",
               "d_accuracy_pts": "Δacc", "d_accuracy_ci_pts": "Δacc 95% CI", "macro_f1_pct": "F1%", "d_macro_f1_pts": "ΔF1",
               "latency_b1_ms": "b1 ms*", "speedup": "×"}
LABELS = {"parent": "fp32 parent", "int8-dynamic": "int8 dyn", "int8-static": "int8 static",
          "int8-static-trt": "int8 trt", "int8-mixed": "int8 mixed", "fp16": "fp16"}


def row_label(method: str, precision: str) -> str:
    return f"engine {precision}" if method == "tensorrt" else LABELS.get(method, method)


def make_row(*, artifact: Path, method: str, precision: str, runs_on: str, params: int | None,
             metrics: dict[str, Any] | None, parent_metrics: dict[str, Any] | None,
             latency: dict[str, Any] | None, parent_latency: dict[str, Any] | None,
             note: str = "") -> dict[str, Any]:
    acc = (metrics or {}).get("accuracy")
    f1 = (metrics or {}).get("macro_f1")
    lat = (latency or {}).get("p50_ms")
    ref_lat = (parent_latency or {}).get("p50_ms")
    # 95% paired-bootstrap interval of each delta (None without per-image predictions on both)
    ci = paired_deltas(parent_metrics, metrics)
    return {
        "label": row_label(method, precision),
        "artifact": artifact.name, "path": str(artifact), "method": method, "precision": precision,
        "runs_on": runs_on, "size_mb": size_mb(artifact) if artifact.exists() else None, "params": params,
        "accuracy_pct": pct(acc), "d_accuracy_pts": delta_pts(acc, (parent_metrics or {}).get("accuracy")),
        "d_accuracy_ci_pts": ci["accuracy"],
        "macro_f1_pct": pct(f1), "d_macro_f1_pts": delta_pts(f1, (parent_metrics or {}).get("macro_f1")),
        "d_macro_f1_ci_pts": ci["macro_f1"],
        "latency_b1_ms": None if lat is None else round(lat, 2 if lat >= 1 else 3),
        "speedup": round(ref_lat / lat, 2) if lat and ref_lat else None,
        "note": note,
    }
