"""The comparison report: `report.json` (for scripts) and `report.md` (for people).

Input is one summary per model run (``<run>/<model>/summary.json``, written by the pipeline):
its training result, its analysis (params, MACs, FLOPs, receptive field, T4 estimates) and one
row per artifact (accuracy, latency, estimates). Every number in the report is copied from those
summaries, which are themselves copied from measurements and computations of the run.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any, Sequence

from fopt import __version__
from fopt.artifacts import write_json_atomic, write_text_atomic
from fopt.errors import InputError
from fopt.evaluation import resolution_note
from fopt.bench.plots import RUNTIME_COLORS
from fopt.pipeline.recommend import DEFAULT_NOISE_PCT, RUNTIME_SIMPLICITY, recommend, winners_by_model

SUMMARY_NAME = "summary.json"


def find_summaries(run_dirs: Sequence[str | Path]) -> list[Path]:
    """Model summaries under each run dir (a run dir, or a model dir inside one)."""
    found: list[Path] = []
    for d in map(Path, run_dirs):
        if not d.is_dir():
            raise InputError(f"{d}: not a folder (expected a `fopt pipeline` run folder)")
        direct = d / SUMMARY_NAME
        hits = [direct] if direct.exists() else sorted(d.glob(f"*/{SUMMARY_NAME}"))
        if not hits:
            raise InputError(f"{d}: no {SUMMARY_NAME} in it or its model folders (did the pipeline finish?)")
        found.extend(hits)
    return found


# What the report reads from a summary: the row keys it indexes, and which values must be numbers.
ROW_NUMBERS = ("accuracy", "macro_f1", "d_accuracy_pts", "d_macro_f1_pts", "p50_b1_ms", "size_mb",
               "best_throughput_ips", "speedup_vs_eager")
SUMMARY_DICTS = ("train", "analysis", "plots", "bench_settings", "machine", "foreign")


def check_summary(s: Any, path: str | Path) -> dict[str, Any]:
    """`s` if it has the shape `fopt pipeline` writes, else InputError naming the file and the
    first thing missing or of the wrong type (never a KeyError from deep inside the report)."""
    def bad(what: str) -> InputError:
        return InputError(f"{path}: not a `fopt pipeline` summary ({what})")

    if not isinstance(s, dict):
        raise bad(f"expected a JSON object, found a {type(s).__name__}")
    if not isinstance(s.get("model"), str) or not s["model"]:
        raise bad("no 'model' name")
    if not isinstance(s.get("rows"), list):
        raise bad("no 'rows' list")
    for key in SUMMARY_DICTS:
        if s.get(key) is not None and not isinstance(s[key], dict):
            raise bad(f"'{key}' is a {type(s[key]).__name__}, not an object")
    for i, r in enumerate(s["rows"]):
        if not isinstance(r, dict):
            raise bad(f"rows[{i}] is a {type(r).__name__}, not an object")
        for key in ("artifact", "method"):
            if not isinstance(r.get(key), str):
                raise bad(f"rows[{i}] has no '{key}'")
        for key in ROW_NUMBERS:
            v = r.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise bad(f"rows[{i}].{key} is {v!r}, not a number")
        for key in ("estimate_ms", "error_pct"):
            if r.get(key) is not None and not isinstance(r[key], dict):
                raise bad(f"rows[{i}].{key} is not an object")
    return s


def load_summaries(paths: Sequence[Path]) -> list[dict[str, Any]]:
    out = []
    for p in paths:
        try:
            s = json.loads(Path(p).read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{p}: unreadable summary ({e})") from None
        s = check_summary(s, p)
        s["_path"] = str(p)
        out.append(s)
    return out


def _f(v: Any, digits: int = 3, pct: bool = False, signed: bool = False) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if pct:
        v = 100.0 * v
    if signed:
        return f"{v:+.{max(digits - 1, 1)}f}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


def _g(v: float | None, unit: float) -> str:
    return "–" if v is None else f"{v / unit:.3g}"


def _rel(path: str | None, base: Path) -> str | None:
    if not path:
        return None
    try:
        return os.path.relpath(path, base)
    except ValueError:
        return path


def build_report(summaries: list[dict[str, Any]], out_dir: str | Path, *,
                 max_accuracy_drop: float = 1.0, latency_budget_ms: float | None = None,
                 plots: dict[str, str] | None = None) -> dict[str, Any]:
    """Write report.json and report.md into `out_dir`; returns the report dict."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [r for s in summaries for r in s.get("rows", [])]
    rec = recommend(rows, max_accuracy_drop=max_accuracy_drop, latency_budget_ms=latency_budget_ms)
    winners = winners_by_model(rows, max_accuracy_drop=max_accuracy_drop, latency_budget_ms=latency_budget_ms)
    plots = dict(plots or {})
    if rows:
        pareto = out_dir / "accuracy_vs_latency.png"
        if plot_pareto(rows, pareto):
            plots["accuracy_vs_latency"] = str(pareto)
    report = {
        "fopt_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "runs": [s["_path"] for s in summaries],
        "machine": next((s.get("machine") for s in summaries if s.get("machine")), None),
        "models": [{k: v for k, v in s.items() if k not in ("rows", "_path")} for s in summaries],
        "rows": rows,
        "recommendation": rec,
        "resolution": resolution_notes(rows, max_accuracy_drop),
        "winners": {m: {k: w.get(k) for k in ("artifact", "runtime", "method", "p50_b1_ms", "accuracy",
                                              "macro_f1")} for m, w in winners.items()},
        "plots": plots,
    }
    write_json_atomic(out_dir / "report.json", report)
    write_text_atomic(out_dir / "report.md", render_markdown(report, out_dir))
    return report


STUDY_COLUMNS = ("model", "params (M)", "val acc %", "val macro-F1 %", "MACs (G)", "FLOPs (G)",
                 "RF (conv path)", "global RF", "T4 naive ms", "T4 roofline ms", "study's T4 figure ms")
ARTIFACT_COLUMNS = ("artifact", "runtime", "format", "precision", "size MB", "val acc %", "Δacc pts [95% CI]",
                    "macro-F1 %", "ΔF1 pts [95% CI]", "p50 b1 ms (spread)", "best items/s (batch)", "speed-up vs eager",
                    "est naive / roofline / calibrated ms [80% band]", "est error % (n / r / c)")


def _table(headers: Sequence[str], rows: list[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _study_row(s: dict[str, Any]) -> list[str]:
    a = s.get("analysis") or {}
    t = s.get("train") or {}
    rf = a.get("receptive_field") or {}
    t4 = a.get("t4") or {}
    return [s["model"], _g(a.get("params"), 1e6), _f(t.get("accuracy"), pct=True),
            _f(t.get("macro_f1"), pct=True), _g(a.get("macs"), 1e9), _g(a.get("flops"), 1e9),
            _f(rf.get("conv_path_size")), "yes" if rf.get("global") else "no",
            _f(t4.get("naive_ms")), _f(t4.get("roofline_ms")), _f(t4.get("study_fp64_ms"))]


def _artifact_row(r: dict[str, Any]) -> list[str]:
    est = r.get("estimate_ms") or {}
    err = r.get("error_pct") or {}
    best = (f"{_f(r.get('best_throughput_ips'))} ({r.get('best_batch')})"
            if r.get("best_throughput_ips") else "–")
    note = f" ⚠ {r['error']}" if r.get("error") else ""
    return [f"{r.get('method')}{note}", r.get("runtime") or "–", r.get("format", "–"), r.get("precision", "–"),
            _f(r.get("size_mb")), _f(r.get("accuracy"), pct=True), _delta(r, "accuracy"),
            _f(r.get("macro_f1"), pct=True), _delta(r, "macro_f1"),
            _f(r.get("p50_b1_ms")) + (f" (±{r['spread_b1_pct']:.0f}%)" if r.get("spread_b1_pct") is not None else ""),
            best, _f(r.get("speedup_vs_eager")),
            " / ".join(_f(est.get(k)) for k in ("naive", "roofline", "calibrated")) + _band(r),
            " / ".join("–" if err.get(k) is None else f"{err[k]:+.0f}" for k in ("naive", "roofline", "calibrated"))]


def _band(r: dict[str, Any]) -> str:
    """" [lo–hi]": the calibrated estimate's 80% band when the bench gave one."""
    band = (r.get("estimate_band_ms") or {}).get("calibrated")
    return f" [{_f(band[0])}–{_f(band[1])}]" if band else ""


def _delta(r: dict[str, Any], metric: str) -> str:
    """"+1.2 [-3.4, +5.6]": the delta in points and its 95% paired interval when known."""
    ci = r.get(f"d_{metric}_ci_pts")
    cell = _f(r.get(f"d_{metric}_pts"), signed=True)
    return cell + (f" [{ci[0]:+.1f}, {ci[1]:+.1f}]" if ci and None not in ci else "")


def resolution_notes(rows: list[dict[str, Any]], budget_pts: float) -> dict[str, str]:
    """Per model: why its validation split cannot resolve the accuracy-drop budget (none when it can)."""
    out: dict[str, str] = {}
    for r in rows:
        if r.get("model") in out:
            continue
        widest = max((r2.get(f"d_{m}_ci_pts") for r2 in rows if r2.get("model") == r.get("model")
                      for m in ("accuracy", "macro_f1") if r2.get(f"d_{m}_ci_pts")),
                     key=lambda ci: ci[1] - ci[0], default=None)
        why = resolution_note(r.get("eval_n"), widest, budget_pts)
        if why:
            out[r.get("model")] = why
    return out


def render_markdown(report: dict[str, Any], out_dir: Path) -> str:
    rec = report["recommendation"]
    m = report.get("machine") or {}
    cpu = (m.get("cpu") or {}).get("model", "unknown CPU")
    parts = ["# fopt report", "",
             f"Generated {report['created']} by fopt {report['fopt_version']} on {cpu}.", ""]
    parts += ["## Recommendation", ""]
    if rec.get("artifact"):
        on = f" on {rec['runtime']}" if rec.get("runtime") else ""
        parts.append(f"**Ship `{_rel(rec['artifact'], out_dir)}`{on}.** {rec['why']}")
    else:
        parts.append(f"**No artifact qualifies.** {rec['why']}")
    limit = f"accuracy and macro-F1 drop ≤ {rec['max_accuracy_drop_pts']:g} points vs the FP32 checkpoint"
    if rec.get("latency_budget_ms") is not None:
        limit += f", batch-1 p50 ≤ {rec['latency_budget_ms']:g} ms"
    parts += ["", f"Rule: the fastest (artifact, runtime) pair (batch-1 p50 on this machine, pooled over "
                  f"fresh processes) with {limit}; pairs within the across-process spread of the fastest "
                  f"(or {DEFAULT_NOISE_PCT:g}% where one process measured them) are ties, broken by accuracy, "
                  f"then file size, then the simpler runtime ({', '.join(RUNTIME_SIMPLICITY)}).", ""]
    if rec.get("rejected"):
        parts.append("Not chosen: " + "; ".join(f"`{Path(x['artifact']).name if x['artifact'] else '?'}`"
                                                f"{' on ' + x['runtime'] if x.get('runtime') else ''} "
                                                f"({x['reason']})" for x in rec["rejected"]) + ".")
        parts.append("")
    for model, why in (report.get("resolution") or {}).items():
        parts += [f"Too few images to resolve the {rec['max_accuracy_drop_pts']:g} pt budget for {model}: "
                  f"{why}; a delta inside its interval may be noise.", ""]
    winners = report.get("winners") or {}
    if winners:
        parts += ["### Winning runtime per model", "",
                  _table(("model", "artifact", "runtime", "p50 b1 ms", "val acc %"),
                         [[m, f"`{Path(w['artifact']).name}`" if w.get("artifact") else "none qualifies",
                           w.get("runtime") or "–", _f(w.get("p50_b1_ms")), _f(w.get("accuracy"), pct=True)]
                          for m, w in winners.items()]), ""]

    models = report["models"]
    parts += ["## Across models (the study's table, corrected)", "",
              _table(STUDY_COLUMNS, [_study_row(s) for s in models]), "",
              "MACs are multiply-accumulates and FLOPs = 2 × MACs (Conv/Gemm/MatMul) plus element-wise, "
              "activation, normalisation and pooling work (`fopt analyze` convention). "
              "*T4 naive* = FLOPs / 8.1 TFLOP/s (the T4's FP32 peak); *T4 roofline* adds memory traffic at "
              "320 GB/s and per-kernel overhead per node. *study's T4 figure* reproduces the original "
              "study's mistake (FLOPs / 253 GFLOP/s, the T4's FP64 rate) so the difference is visible. "
              "At batch 1 small CNNs are bound by memory traffic and launch overhead, not FLOPs: "
              "none of these T4 numbers was measured (no GPU was used for this report). "
              "RF: receptive field of the final feature map along the convolutional path; "
              "*global RF* means the body has global context (squeeze-and-excitation or global pooling "
              "feeding a multiply), so the effective receptive field is the whole image.", ""]

    for s in models:
        rows = [r for r in report["rows"] if r.get("model") == s["model"]]
        t = s.get("train") or {}
        parts += [f"## {s['model']}", ""]
        if t:
            parts.append(f"Trained {t.get('epochs')} epoch(s) at {t.get('img_size')} px on "
                         f"`{_rel(s.get('dataset'), out_dir)}`; best epoch {t.get('best_epoch')} "
                         f"(validation macro-F1). Checkpoint `{_rel(t.get('checkpoint'), out_dir)}`.")
            parts.append("")
        elif s.get("foreign"):
            f = s["foreign"]
            parts.append(f"Not made by fopt: `{f.get('path')}` (sha256 {str(f.get('sha256'))[:12]}…), the FP32 "
                         f"reference for every delta. Assumed: {'; '.join(f.get('assumed') or ['nothing'])}.")
            parts.append("")
        parts += [_table(ARTIFACT_COLUMNS, [_artifact_row(r) for r in rows]), ""]
        b = s.get("bench_settings") or {}
        if b:
            parts.append(f"Latency: {b.get('threads')} intra-op thread(s), same input for every backend, "
                         f"batch sizes {b.get('batch_sizes')}, ≥{b.get('min_time_s')} s per row, "
                         f"{b.get('processes')} process(es); p50 of warm runs. Accuracy on the "
                         f"validation split ({t.get('val_n', '?')} images) through each artifact's own runner. "
                         "Estimate error = estimate / measured − 1.")
            parts.append("")
        for key, title in (("curves", "Training curves"), ("confusion_matrix", "Confusion matrix"),
                           ("measured_vs_estimated", "Measured vs estimated latency"),
                           ("latency_vs_batch", "Latency vs batch size"),
                           ("roofline", "Layers on the T4 roofline (analytical)")):
            p = (s.get("plots") or {}).get(key)
            if p:
                parts += [f"**{title}**", "", f"![{title}]({_rel(p, out_dir)})", ""]

    p = report["plots"].get("accuracy_vs_latency")
    if p:
        parts += ["## Accuracy vs latency", "",
                  "Each point is an (artifact, runtime) pair, coloured by runtime; the line joins the "
                  "Pareto front (no other pair is both faster and more accurate).", "", f"![accuracy vs latency]({_rel(p, out_dir)})", ""]
    parts += ["## How these numbers were made", "",
              "- Accuracy and macro-F1: `fopt eval` through each artifact's runner on the validation split.",
              "- Estimate bands: the calibrated estimate's 80% interval from the calibration's out-of-sample "
              "residuals (`fopt.bench.costmodel.bands`), wider where the model does work no probe measured.",
              "- Δ intervals: 95% paired bootstrap (2,000 seeded resamples of the validation images, both "
              "artifacts scored on each draw) vs the FP32 checkpoint.",
              "- Latency: `fopt bench` on this machine; estimates from `fopt analyze` (naive, roofline) and "
              "the per-machine calibration (`fopt bench --calibrate`).",
              "- Every artifact has a card (`<file>.json`) with its parent's sha256 and library versions.",
              "- Shared virtual machines are noisy between processes (torch eager varied 21–74% between "
              "processes in our measurements); treat single-process differences under ~25% as noise.", ""]
    return "\n".join(parts)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated (lower latency and higher accuracy is better)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best_acc = [], float("-inf")
    for i in order:
        if points[i][1] > best_acc:
            front.append(i)
            best_acc = points[i][1]
    return front


def plot_pareto(rows: list[dict[str, Any]], path: Path) -> bool:
    pts = [(r["p50_b1_ms"], 100 * r["accuracy"], r) for r in rows
           if r.get("p50_b1_ms") is not None and r.get("accuracy") is not None]
    if not pts:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    models = sorted({r.get("model", "") for *_, r in pts})
    markers = "osD^v<>"
    for j, m in enumerate(models):
        sel = [(x, y, r) for x, y, r in pts if r.get("model", "") == m]
        colors = [RUNTIME_COLORS.get(r.get("runtime") or "", "tab:gray") for *_, r in sel]
        ax.scatter([x for x, _, _ in sel], [y for _, y, _ in sel], marker=markers[j % len(markers)],
                   s=50, c=colors, edgecolors="black", linewidths=0.4, zorder=3)
        ax.scatter([], [], marker=markers[j % len(markers)], c="white", edgecolors="black", label=m)
    for rt, color in RUNTIME_COLORS.items():   # legend: one entry per runtime present
        if any(r.get("runtime") == rt for *_, r in pts):
            ax.scatter([], [], marker="o", c=color, label=rt)
        for k, (x, y, r) in enumerate(sorted(sel, key=lambda t: t[0])):
            # Stagger labels: artifacts of one model often sit at nearly the same point.
            ax.annotate(r.get("method", ""), (x, y), textcoords="offset points",
                        xytext=(5, 4 + 11 * (k % 4)), fontsize=8,
                        arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "grey"})
    front = pareto_front([(x, y) for x, y, _ in pts])
    fx = [pts[i][0] for i in front]
    fy = [pts[i][1] for i in front]
    ax.step(fx, fy, where="post", color="grey", lw=1, ls="--", zorder=2, label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("batch-1 p50 latency (ms, log scale)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Accuracy vs latency per (artifact, runtime); colour = runtime")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return True
