"""Bench output: the human table, per-layer tables, JSON and CSV."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from fopt.console import fmt, note, print_table, warn, write_csv, write_json

CSV_COLUMNS = ["artifact", "runtime", "backend", "precision", "batch_size", "status", "error",
               "latency_ms.p50", "latency_ms.p90", "latency_ms.p99", "latency_ms.mean", "latency_ms.std",
               "throughput_ips", "estimate_ms.naive", "estimate_ms.roofline", "estimate_ms.calibrated",
               "error_pct.naive", "error_pct.roofline", "error_pct.calibrated",
               "estimate_band_ms.roofline", "estimate_band_ms.calibrated",
               "device", "threads", "processes", "spread_pct", "n_samples", "n_clipped", "stop_reason",
               "h2d_ms", "timer", "page_faults_per_run"]


def _with_err(est: float | None, err: float | None, band: list[float] | None = None,
              measured: float | None = None) -> str:
    if est is None:
        return "-"
    cell = f"{fmt(est)} ({err:+.0f}%)" if err is not None else fmt(est)
    if band:
        # the 80% band; "outside" when the pooled measured p50 is not in it
        miss = " outside" if measured is not None and not band[0] <= measured <= band[1] else ""
        cell += f" [{fmt(band[0])}-{fmt(band[1])}]{miss}"
    return cell


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def runtime_label(r: dict[str, Any]) -> str | None:
    """The row's runtime, with the backend where one runtime has several (torch: eager, TorchScript)."""
    runtime, backend = r.get("runtime"), r.get("backend")
    if runtime and backend and backend != runtime:
        return f"{runtime} ({backend})"
    return runtime or backend


def _ran_as(r: dict[str, Any]) -> str | None:
    """The artifact's precision, and the one the runtime computed in when it says so and differs."""
    ran = (r.get("execution") or {}).get("inference_precision") or ""
    ran = {"f32": "fp32", "f16": "fp16"}.get(ran, ran)
    prec = r.get("precision")
    return f"{prec} (ran {ran})" if ran and prec not in ("int8", ran) else prec


def table_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One display row per result (strings where two numbers share a cell)."""
    rows = []
    for r in result["results"]:
        lat = r.get("latency_ms") or {}
        est, err = r.get("estimate_ms") or {}, r.get("error_pct") or {}
        band = r.get("estimate_band_ms") or {}
        rows.append({
            "artifact": Path(r["artifact"]).name, "runtime": runtime_label(r), "precision": _ran_as(r),
            "batch": r["batch_size"],
            "p50 ms": lat.get("p50"), "p90 ms": lat.get("p90"), "p99 ms": lat.get("p99"),
            "items/s": r.get("throughput_ips"),
            "spread": f"{r['spread_pct']:.0f}%" if r.get("spread_pct") is not None else None,
            "naive ms": _with_err(est.get("naive"), err.get("naive")),
            "roofline ms": _with_err(est.get("roofline"), err.get("roofline"), band.get("roofline"), lat.get("p50")),
            "calibrated ms": _with_err(est.get("calibrated"), err.get("calibrated"), band.get("calibrated"),
                                       lat.get("p50")),
            "status": r["status"] if r["status"] == "ok" else f"error: {_clip(r.get('error') or '', 60)}",
        })
    return rows


def print_result(result: dict[str, Any], *, top: int = 10) -> None:
    s = result["settings"]
    cpu = result["machine"]["cpu"]
    gpu = result["machine"].get("gpu")
    where = f"{gpu['name']} (driver {gpu.get('driver')})" if gpu and s["device"] == "cuda" else cpu.get("model")
    title = (f"fopt bench on {where}: {s['threads']} threads, device {s['device']}, "
             f"{s['processes']} process(es), budget {s['stop_rule']['min_time_s']:g} s/row")
    rows = table_rows(result)
    columns = [c for c in rows[0] if c != "spread" or any(r["spread"] for r in rows)] if rows else None
    print_table(rows, columns=columns, title=title)
    cal = result.get("calibration")
    if cal:
        note(f"estimates use the calibration of {cal.get('created')} ({cal.get('path')}); "
             f"error = estimate / measured p50 - 1; [low-high] = 80% band from the calibration's "
             f"out-of-sample residuals; spread = max/min - 1 of the processes' p50s")
    for r in result["results"]:
        if r["status"] != "ok":
            warn(f"{Path(r['artifact']).name} batch {r['batch_size']}: {r.get('error')}")
        for n in dict.fromkeys(r.get("estimate_notes") or []):
            note(f"note: {Path(r['artifact']).name} b{r['batch_size']}: {n}")
        if r.get("layers"):
            print_layers(r, top=top)


def layer_rows(row: dict[str, Any], top: int = 10) -> list[dict[str, Any]]:
    layers = [x for x in row.get("layers") or [] if x.get("measured_ms") is not None]
    layers.sort(key=lambda x: -x["measured_ms"])
    out = []
    for x in layers[:top]:
        err = ((x["estimate_ms"] / x["measured_ms"] - 1) * 100
               if x.get("estimate_ms") is not None and x["measured_ms"] else None)
        out.append({"layer": x["name"], "op": x["op"], "class": x.get("class") or x.get("exec_type"),
                    "output": "x".join(map(str, x.get("output_shape") or [])) or None,
                    "measured ms": x["measured_ms"], "share": f"{x['share_pct']:.1f}%" if x.get("share_pct") is not None else None,
                    "estimate ms": x.get("estimate_ms"), "error": f"{err:+.0f}%" if err is not None else None})
    return out


def print_layers(row: dict[str, Any], top: int = 10) -> None:
    rows = layer_rows(row, top)
    layers = row.get("layers") or []
    measured = [x["measured_ms"] for x in layers if x.get("measured_ms") is not None]
    shown = sum(r["measured ms"] for r in rows)
    total = sum(measured)
    src = layers[0].get("source") if layers else "profiler"
    title = (f"{Path(row['artifact']).name} batch {row['batch_size']}: top {len(rows)} of {len(layers)} layers "
             f"by measured time ({src}); they take {shown / total * 100 if total else 0:.0f}% of "
             f"{fmt(total)} ms profiled")
    print_table(rows, title=title)
    if row.get("backend") == "onnxruntime":
        note("profiled node times include the profiler's own cost per node (a few us), so small "
             "nodes look slower here than in the unprofiled run")


def write_outputs(result: dict[str, Any], *, json_path: str | None = None, csv_path: str | None = None) -> None:
    write_json(json_path, result)
    if csv_path:
        write_csv(csv_path, result["results"], columns=CSV_COLUMNS)


def summarise_errors(results: Sequence[dict[str, Any]], key: str = "calibrated",
                     band_pct: float = 25.0) -> dict[str, Any]:
    """Fraction of ok rows whose `key` estimate is within +-band_pct, and the median |error|."""
    errs = [r["error_pct"][key] for r in results
            if r.get("status") == "ok" and (r.get("error_pct") or {}).get(key) is not None]
    if not errs:
        return {"points": 0, "within": None, "median_abs_pct": None}
    absd = sorted(abs(e) for e in errs)
    mid = len(absd) // 2
    median = absd[mid] if len(absd) % 2 else (absd[mid - 1] + absd[mid]) / 2
    return {"points": len(errs), "within": sum(1 for e in absd if e <= band_pct) / len(errs),
            "median_abs_pct": median}


def band_coverage(results: Sequence[dict[str, Any]], key: str = "calibrated") -> dict[str, Any]:
    """How the `key` estimate's 80% bands did on ok rows that have one: the share whose pooled
    measured p50 lies inside (``coverage``) and the median half-width in % of the estimate."""
    inside, halves = [], []
    for r in results:
        band = (r.get("estimate_band_ms") or {}).get(key)
        est = (r.get("estimate_ms") or {}).get(key)
        p50 = (r.get("latency_ms") or {}).get("p50")
        if r.get("status") != "ok" or not band or not est or p50 is None:
            continue
        inside.append(band[0] <= p50 <= band[1])
        halves.append((band[1] - band[0]) / 2 / est * 100)
    if not inside:
        return {"points": 0, "coverage": None, "median_half_width_pct": None}
    halves.sort()
    mid = len(halves) // 2
    median = halves[mid] if len(halves) % 2 else (halves[mid - 1] + halves[mid]) / 2
    return {"points": len(inside), "coverage": sum(inside) / len(inside), "median_half_width_pct": median}
