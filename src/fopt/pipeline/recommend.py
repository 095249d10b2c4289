"""What to ship: the fastest (artifact, runtime) pair whose accuracy cost stays within the allowed drop.

The same file can run on several runtimes at very different speeds (a QDQ ONNX file on ONNX Runtime
or OpenVINO), so a candidate is a pair, measured and evaluated as one; the recommendation names
both, and `winners_by_model` gives each model's own choice.

Latency differences within the measurement noise are ties: a pair is tied with the fastest when
its p50 is at most (1 + noise) times the fastest's, noise being the larger across-process spread
of the two (``spread_b1_pct``, max/min - 1 of the process p50s) or `DEFAULT_NOISE_PCT` where a row
was measured in one process. Among tied pairs the higher accuracy wins, then the higher macro-F1,
then the smaller file, then the simpler runtime (`RUNTIME_SIMPLICITY`), and the recommendation
says which pairs it was tied with.
"""

from __future__ import annotations

from typing import Any

# A stated default, not a measured one: MEASURED.md saw 2-6% for large models and 20-70% for small
# ones between processes on a shared VM; 10% is the least a single-process number deserves.
DEFAULT_NOISE_PCT = 10.0
# Fewer moving parts first: ORT ships as one wheel with the ONNX file, torch needs the framework,
# OpenVINO a second runtime (and often an IR), TensorRT a GPU, a matching engine and its libraries.
RUNTIME_SIMPLICITY = ("onnxruntime", "torch", "openvino", "tensorrt")


def recommend(rows: list[dict[str, Any]], *, max_accuracy_drop: float = 1.0,
              latency_budget_ms: float | None = None,
              latency_key: str = "p50_b1_ms") -> dict[str, Any]:
    """Pick from report rows (one per artifact and runtime).

    Each row needs ``artifact``, ``runtime``, ``accuracy``, ``macro_f1`` (fractions), ``d_accuracy_pts`` and
    ``d_macro_f1_pts`` (change vs the model's FP32 checkpoint, in percentage points) and the
    latency key (ms). Rows without a measured latency or accuracy cannot qualify. The drop limit
    is in points and applies to accuracy and macro-F1 separately.
    """
    if max_accuracy_drop < 0:
        raise ValueError("max_accuracy_drop must be >= 0")
    candidates, rejected = [], []
    for r in rows:
        lat = r.get(latency_key)
        why = None
        if lat is None or r.get("accuracy") is None or r.get("d_accuracy_pts") is None:
            why = "not measured"
        elif -r["d_accuracy_pts"] > max_accuracy_drop + 1e-9:
            why = f"accuracy drop {-r['d_accuracy_pts']:.2f} pts > {max_accuracy_drop:g}"
        elif r.get("d_macro_f1_pts") is not None and -r["d_macro_f1_pts"] > max_accuracy_drop + 1e-9:
            why = f"macro-F1 drop {-r['d_macro_f1_pts']:.2f} pts > {max_accuracy_drop:g}"
        elif latency_budget_ms is not None and lat > latency_budget_ms:
            why = f"p50 {lat:.3g} ms > budget {latency_budget_ms:g} ms"
        (rejected if why else candidates).append((r, why))
    base = {"max_accuracy_drop_pts": max_accuracy_drop, "latency_budget_ms": latency_budget_ms,
            "considered": len(rows),
            "rejected": [{"artifact": r.get("artifact"), "runtime": r.get("runtime"), "reason": why}
                         for r, why in rejected]}
    if not candidates:
        return {**base, "artifact": None, "runtime": None,
                "why": "none qualifies: every artifact is unmeasured, loses more accuracy than "
                       f"{max_accuracy_drop:g} pts, or misses the latency budget"}
    fastest, _ = min(candidates, key=lambda c: c[0][latency_key])
    tied = [r for r, _ in candidates
            if r[latency_key] <= fastest[latency_key] * (1 + max(noise_pct(fastest), noise_pct(r)) / 100)]
    best = min(tied, key=lambda r: _tie_order(r, latency_key))
    slowest_ok = max(c[0][latency_key] for c in candidates)
    on = f" on {best['runtime']}" if best.get("runtime") else ""
    spread = f", spread {best['spread_b1_pct']:.0f}% across processes" if best.get("spread_b1_pct") is not None else ""
    lead = "is the fastest qualifying artifact" if len(tied) == 1 else "is the pick among the fastest"
    why = (f"{best.get('model', '')} {best.get('method', best.get('format', ''))}{on} {lead} "
           f"at {best[latency_key]:.3g} ms (batch 1 p50{spread}) with accuracy "
           f"{100 * best['accuracy']:.1f}% ({best['d_accuracy_pts']:+.2f} pts) and macro-F1 "
           f"{100 * best['macro_f1']:.1f}% ({best.get('d_macro_f1_pts', 0.0):+.2f} pts vs FP32)")
    if len(tied) > 1:
        why += "; " + _tie_text(best, [r for r in tied if r is not best], latency_key)
    if len(candidates) > len(tied):
        why += f"; {len(candidates) - len(tied)} other qualifying pair(s) were slower (up to {slowest_ok:.3g} ms)"
    return {**base, "artifact": best.get("artifact"), "runtime": best.get("runtime"), "model": best.get("model"),
            "method": best.get("method"), "p50_b1_ms": best[latency_key],
            "accuracy": best["accuracy"], "macro_f1": best["macro_f1"],
            "tied_with": [{"artifact": r.get("artifact"), "runtime": r.get("runtime"), latency_key: r[latency_key]}
                          for r in tied if r is not best],
            "why": why + "."}


def noise_pct(row: dict[str, Any]) -> float:
    """The row's between-process noise in %: its measured spread, or the stated default when it
    was measured in one process (a spread of 0 is one process, not a noiseless machine)."""
    spread = row.get("spread_b1_pct")
    return float(spread) if spread else DEFAULT_NOISE_PCT


def _runtime_rank(runtime: str | None) -> int:
    return RUNTIME_SIMPLICITY.index(runtime) if runtime in RUNTIME_SIMPLICITY else len(RUNTIME_SIMPLICITY)


def _tie_order(r: dict[str, Any], latency_key: str) -> tuple:
    size = r.get("size_mb")
    return (-r["accuracy"], -(r.get("macro_f1") or 0.0), float("inf") if size is None else size,
            _runtime_rank(r.get("runtime")), r[latency_key])


def _tie_text(best: dict[str, Any], others: list[dict[str, Any]], latency_key: str) -> str:
    """"tied within noise with X (1.09 ms, ±12%), preferred for higher accuracy"."""
    names = ", ".join(f"{r.get('method', r.get('format', '?'))}{' on ' + r['runtime'] if r.get('runtime') else ''} "
                      f"({r[latency_key]:.3g} ms, noise ±{max(noise_pct(best), noise_pct(r)):.0f}%)"
                      for r in others)
    reasons = []
    for r in others:
        b, o = _tie_order(best, latency_key), _tie_order(r, latency_key)
        k = next((i for i in range(len(b)) if b[i] != o[i]), len(b) - 1)
        reasons.append(("higher accuracy", "higher macro-F1", "smaller file", "simpler runtime", "lower p50")[k])
    return f"tied within noise with {names}; preferred for {', '.join(dict.fromkeys(reasons))}"


def winners_by_model(rows: list[dict[str, Any]], **rule: Any) -> dict[str, dict[str, Any]]:
    """`recommend` over each model's own rows: its winning artifact and runtime."""
    models = dict.fromkeys(r.get("model") for r in rows)
    return {m: recommend([r for r in rows if r.get("model") == m], **rule) for m in models}
