"""Which artifact to ship: the fastest one whose accuracy cost stays within the allowed drop."""

from __future__ import annotations

from typing import Any


def recommend(rows: list[dict[str, Any]], *, max_accuracy_drop: float = 1.0,
              latency_budget_ms: float | None = None,
              latency_key: str = "p50_b1_ms") -> dict[str, Any]:
    """Pick from report rows (one per artifact).

    Each row needs ``artifact``, ``accuracy``, ``macro_f1`` (fractions), ``d_accuracy_pts`` and
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
            "rejected": [{"artifact": r.get("artifact"), "reason": why} for r, why in rejected]}
    if not candidates:
        return {**base, "artifact": None,
                "why": "none qualifies: every artifact is unmeasured, loses more accuracy than "
                       f"{max_accuracy_drop:g} pts, or misses the latency budget"}
    best, _ = min(candidates, key=lambda c: c[0][latency_key])
    slowest_ok = max(c[0][latency_key] for c in candidates)
    why = (f"{best.get('model', '')} {best.get('method', best.get('format', ''))} is the fastest "
           f"qualifying artifact at {best[latency_key]:.3g} ms (batch 1 p50) with accuracy "
           f"{100 * best['accuracy']:.1f}% ({best['d_accuracy_pts']:+.2f} pts) and macro-F1 "
           f"{100 * best['macro_f1']:.1f}% ({best.get('d_macro_f1_pts', 0.0):+.2f} pts vs FP32)")
    if len(candidates) > 1:
        why += f"; {len(candidates) - 1} other qualifying artifact(s) were slower (up to {slowest_ok:.3g} ms)"
    return {**base, "artifact": best.get("artifact"), "model": best.get("model"),
            "method": best.get("method"), "p50_b1_ms": best[latency_key],
            "accuracy": best["accuracy"], "macro_f1": best["macro_f1"], "why": why + "."}
