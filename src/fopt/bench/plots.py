"""Bench plots (matplotlib, Agg): measured vs estimated, latency vs batch, per-layer bars.

All take the JSON form of a bench result (``BenchResult.to_dict()``), so a saved JSON can be
plotted again without re-measuring.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fopt.artifacts import atomic_path
from fopt.bench.report import band_coverage, summarise_errors

BACKEND_COLORS = {"torch-eager": "tab:red", "torchscript": "tab:orange", "onnxruntime": "tab:blue",
                  "tensorrt": "tab:green", "openvino": "tab:purple"}
# One colour per runtime (the pipeline's Pareto plot colours its points by runtime).
RUNTIME_COLORS = {"torch": "tab:red", "onnxruntime": "tab:blue", "openvino": "tab:purple",
                  "tensorrt": "tab:green"}
PRECISION_MARKERS = {"fp32": "o", "fp16": "s", "int8": "^", "mixed": "D"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    plt = _plt()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return path


def _label(r: dict[str, Any]) -> str:
    backend = {"onnxruntime": "ORT", "torch-eager": "eager"}.get(r.get("backend") or "", r.get("backend"))
    return f"{Path(r['artifact']).name.split('.')[0]} {backend} {r.get('precision')} b{r['batch_size']}"


def _ok(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in result["results"] if r["status"] == "ok" and r.get("latency_ms")]


def plot_measured_vs_estimated(result: dict[str, Any], path: Path, *, band_pct: float = 25.0,
                               annotate: bool = True) -> Path | None:
    """One point per model/backend/batch: calibrated (filled) and naive (hollow) vs measured p50."""
    import numpy as np

    plt = _plt()
    rows = [r for r in _ok(result) if any((r.get("estimate_ms") or {}).get(k) for k in ("calibrated", "naive"))]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 6.5), dpi=120)
    xs_all, ys_all = [], []
    for r in rows:
        m = r["latency_ms"]["p50"]
        color = BACKEND_COLORS.get(r.get("backend") or "", "tab:gray")
        marker = PRECISION_MARKERS.get(r.get("precision") or "", "o")
        cal = r["estimate_ms"].get("calibrated")
        naive = r["estimate_ms"].get("naive")
        if cal:
            ax.scatter([m], [cal], c=color, marker=marker, s=40, alpha=0.85, edgecolors="black", linewidths=0.4)
            band = (r.get("estimate_band_ms") or {}).get("calibrated")
            if band:   # the 80% band as an error bar
                ax.errorbar([m], [cal], yerr=[[max(cal - band[0], 0.0)], [max(band[1] - cal, 0.0)]],
                            fmt="none", ecolor=color, elinewidth=0.8, capsize=2, alpha=0.7)
                ys_all += [v for v in band if v > 0]
            if r.get("latency_ms", {}).get("p90"):
                ax.plot([m, r["latency_ms"]["p90"]], [cal, cal], color=color, lw=0.6, alpha=0.5)
            if annotate and abs(r["error_pct"]["calibrated"] or 0) > band_pct:
                ax.annotate(_label(r), (m, cal), fontsize=6, alpha=0.8, xytext=(3, 3), textcoords="offset points")
            ys_all.append(cal)
        if naive:
            ax.scatter([m], [naive], facecolors="none", edgecolors=color, marker=marker, s=30, alpha=0.5)
            ys_all.append(naive)
        xs_all.append(m)
    lo = min(xs_all + ys_all) / 1.5
    hi = max(xs_all + ys_all) * 1.5
    line = np.logspace(np.log10(lo), np.log10(hi), 50)
    k = band_pct / 100
    ax.plot(line, line, "k-", lw=1, label="y = x")
    ax.fill_between(line, line * (1 - k), line * (1 + k), color="grey", alpha=0.15, label=f"±{band_pct:g}%")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured p50 latency (ms); line to p90")
    ax.set_ylabel("estimated latency (ms)")

    sc, sn = summarise_errors(rows, "calibrated", band_pct), summarise_errors(rows, "naive", band_pct)
    title = "measured vs estimated"
    if sc["points"]:
        title += (f": calibrated {sc['within'] * 100:.0f}% within ±{band_pct:g}% "
                  f"(median |err| {sc['median_abs_pct']:.0f}%)")
    cov = band_coverage(rows, "calibrated")
    if cov["points"]:
        title += (f"\n80% bands (error bars) hold {cov['coverage'] * 100:.0f}% of measured p50s, "
                  f"median half-width ±{cov['median_half_width_pct']:.0f}%")
    if sn["points"]:
        title += f"\nnaive FLOPs/peak (hollow): {sn['within'] * 100:.0f}% within, median |err| {sn['median_abs_pct']:.0f}%"
    ax.set_title(title, fontsize=9)
    handles = [plt.Line2D([], [], color=c, marker="o", ls="", label=b) for b, c in BACKEND_COLORS.items()
               if any(r.get("backend") == b for r in rows)]
    handles += [plt.Line2D([], [], color="black", marker=mk, ls="", mfc="white", label=p)
                for p, mk in PRECISION_MARKERS.items() if any(r.get("precision") == p for r in rows)]
    ax.legend(handles=handles + ax.get_legend_handles_labels()[0], fontsize=7, loc="upper left")
    ax.grid(True, which="both", lw=0.3, alpha=0.5)
    fig.tight_layout()
    return _save(fig, path)


def plot_latency_vs_batch(result: dict[str, Any], path: Path) -> Path | None:
    """p50 (p10-p90 as error bar) per artifact vs batch size; calibrated estimate dashed."""
    plt = _plt()
    rows = _ok(result)
    if not rows:
        return None
    by_art: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        by_art.setdefault((r["artifact"], r.get("runtime") or ""), []).append(r)
    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=120)
    cmap = plt.get_cmap("tab10")
    for i, ((art, _), rs) in enumerate(sorted(by_art.items())):
        rs.sort(key=lambda r: r["batch_size"])
        bs = [r["batch_size"] for r in rs]
        p50 = [r["latency_ms"]["p50"] for r in rs]
        p90 = [r["latency_ms"]["p90"] for r in rs]
        color = cmap(i % 10)
        label = f"{Path(art).name} ({rs[0].get('backend')}, {rs[0].get('precision')})"
        ax.errorbar(bs, p50, yerr=[[0] * len(bs), [b - a for a, b in zip(p50, p90)]], marker="o",
                    color=color, capsize=3, label=label)
        cal = [(r["batch_size"], r["estimate_ms"].get("calibrated")) for r in rs if r["estimate_ms"].get("calibrated")]
        if cal:
            ax.plot([c[0] for c in cal], [c[1] for c in cal], ls="--", color=color, alpha=0.7, lw=1)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("latency p50 (ms), bar to p90; dashed: calibrated estimate")
    ax.set_title("latency vs batch size", fontsize=10)
    ax.grid(True, which="both", lw=0.3, alpha=0.5)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def plot_layers(row: dict[str, Any], path: Path, top: int = 15) -> Path | None:
    """Horizontal bars of the top layers by measured time, with the node estimate beside."""
    import numpy as np

    plt = _plt()
    layers = [x for x in row.get("layers") or [] if x.get("measured_ms") is not None]
    if not layers:
        return None
    layers.sort(key=lambda x: -x["measured_ms"])
    sel = layers[:top][::-1]
    y = np.arange(len(sel))
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(sel) + 1.5), dpi=120)
    ax.barh(y + 0.2, [x["measured_ms"] for x in sel], height=0.4, color="tab:blue", label="measured (profiled)")
    if any(x.get("estimate_ms") is not None for x in sel):
        ax.barh(y - 0.2, [x.get("estimate_ms") or 0 for x in sel], height=0.4, color="tab:orange",
                label="calibrated estimate")
    names = [f"{_short(x['name'])} [{x.get('class') or x.get('exec_type') or x.get('op')}]" for x in sel]
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=6)
    ax.set_xlabel("ms per run")
    total = sum(x["measured_ms"] for x in layers)
    shown = sum(x["measured_ms"] for x in sel)
    ax.set_title(f"{Path(row['artifact']).name} b{row['batch_size']}: top {len(sel)} layers = "
                 f"{shown / total * 100:.0f}% of {total:.3g} ms profiled", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(True, axis="x", lw=0.3, alpha=0.5)
    fig.tight_layout()
    return _save(fig, path)


def _short(name: str, n: int = 48) -> str:
    return name if len(name) <= n else "..." + name[-(n - 3):]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def plot_all(result: dict[str, Any], out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [plot_measured_vs_estimated(result, out / "measured_vs_estimated.png"),
               plot_latency_vs_batch(result, out / "latency_vs_batch.png")]
    for r in result["results"]:
        if r.get("layers"):
            on = "_openvino" if r.get("runtime") == "openvino" and r["artifact"].endswith(".onnx") else ""
            name = _slug(f"layers_{Path(r['artifact']).name}{on}_b{r['batch_size']}.png")
            written.append(plot_layers(r, out / name))
    return [p for p in written if p is not None]
