"""Runtimes side by side, same run: torch eager, ONNX Runtime FP32/INT8, OpenVINO FP32/INT8.

For resnet50, efficientnet_b0, mobilenet_v3_large and resnet18 (``--models``) at 224 px with
random weights (latency does not depend on them), batch 1 and 8:

1. builds each model's artifacts once under ``<out>_work/``: the checkpoint (torch eager), the FP32
   ONNX export, then through `fopt optimize` (`fopt.optimize.run.optimize_onnx`) fopt's static
   INT8 (the flavour this CPU gets), the precision search's mixed INT8 graph, OpenVINO IR FP32
   and NNCF INT8; all INT8 calibrates on 32 synthetic garment images (real pictures, never
   random tensors);
2. measures every column with `fopt.bench.run.bench_artifacts`: ``--processes`` fresh processes
   per row, in interleaved rounds over all rows (a slow spell of a shared machine then lands on one
   process of several rows, and the spread column shows it); same threads and input for all.
   Columns: ``torch``, ``ort-fp32``, ``ort-int8``, ``ort-mixed`` (the precision search's mixed
   INT8 graph, `fopt optimize --int8-static --search`, searched on ONNX Runtime), ``ov-fp32``
   (IR), ``ov-int8`` (NNCF IR), ``ov-on-ort-int8`` and ``ov-on-mixed`` (OpenVINO running fopt's
   QDQ INT8 ONNX files directly);
3. writes JSON (every bench row, the table of p50s with their process spread, the load average
   before and after) and a plot (grouped bars per model, one panel per batch size).

For each model and batch, ``best`` names the fastest column and ``vs_openvino_default`` its
speed-up over the faster of OpenVINO FP32 and OpenVINO INT8 with default settings, the bar the
README's runtime table is read against. Timings on a shared VM are noisy; read the spread.

    python benchmarks/bench_runtimes.py --json artifacts/bench/bench_runtimes.json
    python benchmarks/bench_runtimes.py --quick --json /tmp/rt.json      # one small model, seconds
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

MODELS = ("resnet50", "efficientnet_b0", "mobilenet_v3_large", "resnet18")
QUICK_MODELS = ("mobilenet_v3_small",)
COLUMNS = ("torch", "ort-fp32", "ort-int8", "ort-mixed", "ov-fp32", "ov-int8", "ov-on-ort-int8", "ov-on-mixed")
COLOURS = {"torch": "tab:red", "ort-fp32": "tab:blue", "ort-int8": "tab:cyan", "ort-mixed": "tab:green",
           "ov-fp32": "tab:purple", "ov-int8": "tab:pink", "ov-on-ort-int8": "tab:olive", "ov-on-mixed": "tab:brown"}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_optimized(onnx: Path, calib_dir: Path, threads: int) -> dict[str, Path]:
    """OpenVINO IR FP32, NNCF INT8 and the precision search's mixed INT8 graph beside `onnx`, each
    with its card, made the way a user makes them: `fopt optimize --openvino --int8-static
    --search` on 32 calibration images (searched on ONNX Runtime with the benchmark's threads)."""
    from fopt.optimize.base import METHODS, output_path
    from fopt.optimize.run import OptimizeOptions, optimize_onnx

    out = {column: output_path(METHODS.get(method), onnx, onnx.parent)
           for column, method in (("ov-fp32", "openvino"), ("ov-int8", "openvino-int8"), ("ort-mixed", "int8-mixed"))}
    if not all(p.exists() and p.with_name(p.name + ".json").exists() for p in out.values()):
        res = optimize_onnx(onnx, OptimizeOptions(methods=("int8-static", "openvino"), search=True,
                                                  out_dir=str(onnx.parent), calib_data=str(calib_dir), calib_size=32,
                                                  evaluate=False, latency=False, force=True, threads=threads),
                            log=log)
        s = next(a["search"] for a in res["artifacts"] if a["method"] == "int8-mixed")
        log(f"  search: kept FP32 {s['kept_fp32_classes'] or 'nothing'}; FP32 {s['fp32_ms']:.3g} ms, "
            f"all-INT8 {s['int8_ms']:.3g} ms, mixed {s['mixed_ms']:.3g} ms ({s['seconds']:.0f} s)")
    return out


def targets_for(model: str, size: int, work: Path, calib_dir, threads: int) -> list[tuple[str, tuple[str, str | None]]]:
    """(column, (artifact, runtime)) for every column of one model."""
    from bench_quality import build_artifacts

    base = build_artifacts(model, size, work, calib_dir)
    opt = build_optimized(base["onnxruntime/fp32"], calib_dir(), threads)
    mixed = str(opt["ort-mixed"])
    return [("torch", (str(base["torch-eager/fp32"]), None)),
            ("ort-fp32", (str(base["onnxruntime/fp32"]), None)),
            ("ort-int8", (str(base["onnxruntime/int8"]), None)),
            ("ov-fp32", (str(opt["ov-fp32"]), None)),
            ("ov-int8", (str(opt["ov-int8"]), None)),
            ("ov-on-ort-int8", (str(base["onnxruntime/int8"]), "openvino")),
            ("ort-mixed", (mixed, None)),
            ("ov-on-mixed", (mixed, "openvino"))]


def table(rows: list[dict[str, Any]], columns: dict[tuple[str, str | None], tuple[str, str]]) -> dict[str, Any]:
    """{model: {batch: {column: {p50_ms, spread_pct, status}, best, vs_openvino_default}}}."""
    out: dict[str, Any] = {}
    for r in rows:
        key = (r["artifact"], r.get("runtime") if r.get("runtime") == "openvino" and r["artifact"].endswith(".onnx")
               else None)
        model, column = columns[key]
        cell = {"p50_ms": (r.get("latency_ms") or {}).get("p50"), "spread_pct": r.get("spread_pct"),
                "status": r["status"], "error": r.get("error"),
                "ran_with": (r.get("execution") or {}).get("inference_precision")}
        out.setdefault(model, {}).setdefault(str(r["batch_size"]), {})[column] = cell
    for per_batch in out.values():
        for cells in per_batch.values():
            ok = {c: v["p50_ms"] for c, v in cells.items() if v["p50_ms"]}
            ov = [ok[c] for c in ("ov-fp32", "ov-int8") if c in ok]
            best = min(ok, key=ok.get) if ok else None
            cells["best"] = best
            cells["vs_openvino_default"] = (min(ov) / ok[best]) if best and ov else None
    return out


def plot(tab: dict[str, Any], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    batches = sorted({b for per in tab.values() for b in per}, key=int)
    if not batches:
        return None
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4.2), squeeze=False)
    models = list(tab)
    width = 0.8 / len(COLUMNS)
    for ax, b in zip(axes[0], batches):
        for j, col in enumerate(COLUMNS):
            ys = [((tab[m].get(b) or {}).get(col) or {}).get("p50_ms") or 0.0 for m in models]
            ax.bar(np.arange(len(models)) + (j - len(COLUMNS) / 2 + 0.5) * width, ys, width,
                   color=COLOURS[col], label=col)
        ax.set_xticks(np.arange(len(models)))
        ax.set_xticklabels(models, fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("p50 latency (ms, log)")
        ax.set_title(f"batch {b}", fontsize=10)
        ax.grid(True, axis="y", which="both", lw=0.3, alpha=0.5)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("runtimes side by side (same run, fresh processes, interleaved rounds)", fontsize=10)
    fig.tight_layout()
    from fopt.artifacts import atomic_path

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    finally:
        plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=Path("artifacts/bench/bench_runtimes.json"), help="JSON file")
    ap.add_argument("--models", nargs="+", default=None, help=f"default: {' '.join(MODELS)}")
    ap.add_argument("--img-size", type=int, default=None, help="default 224 (64 with --quick)")
    ap.add_argument("--batch-sizes", default=None, help="default 1,8 (1 with --quick)")
    ap.add_argument("--threads", type=int, default=None, help="default: the physical cores available")
    ap.add_argument("--processes", type=int, default=3, help="fresh measuring processes per row (rounds)")
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds of timing per row and process")
    ap.add_argument("--quick", action="store_true",
                    help=f"{', '.join(QUICK_MODELS)} at 64 px, batch 1, one in-process round, short timing")
    args = ap.parse_args(argv)

    from fopt.artifacts import write_json_atomic
    from fopt.bench.measure.machine import default_threads
    from fopt.bench.run import bench_artifacts
    from fopt.runtime.openvino import openvino_unavailable_reason

    t0 = time.perf_counter()
    reason = openvino_unavailable_reason()
    if reason:   # the comparison is about OpenVINO: without it there is nothing to compare
        write_json_atomic(args.json, {"benchmark": "bench_runtimes", "skipped": reason})
        log(f"skipped: {reason}")
        return 0
    models = list(args.models or (QUICK_MODELS if args.quick else MODELS))
    size = args.img_size or (64 if args.quick else 224)
    batch_sizes = [int(b) for b in (args.batch_sizes or ("1" if args.quick else "1,8")).split(",")]
    processes = 1 if args.quick else args.processes
    min_time = min(args.min_time, 0.2) if args.quick else args.min_time
    threads = args.threads or default_threads()
    work = args.json.with_name(args.json.stem + "_work")
    work.mkdir(parents=True, exist_ok=True)

    from bench_quality import calibration_images

    cache: dict[str, Any] = {}

    def calib() -> Path:
        if "dir" not in cache:
            cache["dir"] = calibration_images(work, size)
        return cache["dir"]

    columns: dict[tuple[str, str | None], tuple[str, str]] = {}
    targets: list[tuple[str, str | None]] = []
    build_errors = {}
    for m in models:
        log(f"building {m} at {size} px")
        try:
            for column, target in targets_for(m, size, work, calib, threads):
                columns[target] = (m, column)
                targets.append(target)
        except Exception as e:  # one model that cannot be built is reported; the others still run
            build_errors[m] = f"{type(e).__name__}: {e}"
            log(f"  {m}: cannot build: {build_errors[m]}")
    load_before = os.getloadavg()
    log(f"measuring {len(targets)} rows x batch {batch_sizes}, {processes} process(es) each, {threads} threads")
    res = bench_artifacts(targets, batch_sizes=batch_sizes, threads=threads, min_time_s=min_time,
                          processes=processes, estimate=False, on_progress=log).to_dict()
    load_after = os.getloadavg()
    tab = table(res["results"], columns)
    for m, per in tab.items():
        for b, cells in per.items():
            cols = "  ".join(f"{c} {cells[c]['p50_ms']:.2f}" if cells.get(c, {}).get("p50_ms") else f"{c} -"
                             for c in COLUMNS)
            vs = cells["vs_openvino_default"]
            log(f"{m} b{b}: {cols}  best {cells['best']}" + (f" ({vs:.2f}x the OpenVINO default)" if vs else ""))
    doc = {"benchmark": "bench_runtimes", "columns": list(COLUMNS), "table": tab,
           "settings": {"models": models, "img_size": size, "batch_sizes": batch_sizes, "threads": threads,
                        "processes": processes, "min_time_s": min_time, "quick": args.quick, "weights": "random",
                        "calibration_images": 32},
           "load_average": {"before": load_before, "after": load_after},
           "build_errors": build_errors, "machine": res["machine"], "results": res["results"],
           "seconds": round(time.perf_counter() - t0, 1)}
    write_json_atomic(args.json, doc)
    p = plot(tab, args.json.with_suffix(".png"))
    log(f"wrote {args.json}" + (f" and {p}" if p else "") + f" ({doc['seconds']:.0f} s)")
    return 0 if not build_errors else 1


if __name__ == "__main__":
    sys.exit(main())
