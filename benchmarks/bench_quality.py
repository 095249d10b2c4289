"""Quality of `fopt bench`'s calibrated latency estimate: how often it lands within +-25%.

For every registry model except efficientnet_b7 and vgg16 (``--long`` adds them) x {torch eager
FP32, ONNX Runtime FP32, ONNX Runtime static INT8} x batch {1, 8}, at 224 px (``--img-size``),
with random weights (latency does not depend on them) and 22 classes:

1. builds the artifacts once under ``<out>_work/`` (checkpoint, ONNX export, and static INT8 the
   way a user makes it: `fopt.optimize.run.optimize_onnx`, calibrated on synthetic garment images),
2. uses its own calibration, never the user's: ``$FOPT_CACHE_DIR`` is set to
   ``<out>_work/cache`` for this process and the measuring processes it starts
   (`use_private_cache`), and a full ``fopt bench --calibrate`` is made there on the first run
   (again with ``--recalibrate``; up to three times while the machine is busy, unless
   ``--any-calibration``). The JSON's ``settings.calibration`` names the file, its date, duration
   and stability. The calibration runs micro-benchmarks on synthetic probe networks and
   never sees a registry model, so every estimate is out of sample by construction. One term
   uses something counted in the measured processes: their page faults per run (getrusage, a
   count, not a time), priced at the calibrated cost per fault (`fopt.bench.measure.faults`); the report
   gives the fraction without that term too,
3. measures every artifact with ``bench_artifacts`` in ``--processes`` fresh processes each, with
   ``--per-layer`` so each point's error can be explained,
4. reports per backend and overall: the fraction of points whose calibrated estimate is within
   +-25% of the measured p50, the median absolute error, the same for the naive FLOPs/peak and
   roofline estimates, and the worst points with the reason (the kernel class whose estimated
   time is furthest from its profiled time, and the spread between processes).

Held-out mode (on by default; ``--held-out`` names the models, ``--held-out`` with no name turns
it off): torchvision classifiers from families the registry, the probes and every tuning decision
of the cost model never saw (`HELD_OUT`), built with ``torchvision.models`` and exported with plain
``torch.onnx.export`` (no card: a foreign file, as a user brings one; its static INT8 comes from
`optimize_onnx` told the normalisation, ``--preset inception``), measured on ONNX Runtime FP32
and static INT8 like the rest. The report
then gives, for in-family and held-out points apart, the fraction within +-25% and the 80% bands'
coverage (the share of measured p50s inside their band, `fopt.bench.costmodel.bands`) and median
half-width: a change that helps in-family and hurts held-out is a regression.

Small inputs (``--small-size``, default 64 px, the demo's; 0 turns it off): ``--small-models``
(resnet18) built and measured at that size too, on all three backends, and reported as their own
group (within +-25%, band coverage) beside the headline scores, which stay the ``--img-size`` ones.

``--compare-calibration CACHE_FILE`` prices the same measured rows again with another
calibration (a cache file of ``fopt bench --calibrate``, e.g. one made before a cost-model
change) and reports its scores beside: two calibrations compared without the machine's noise
between runs, which on a shared VM is larger than most cost-model changes.

The measurement itself is noisy on shared virtual machines (README, "Measuring honestly": tens of
percent between processes for torch eager), so run it on a quiet machine and read the spread column.

    python benchmarks/bench_quality.py --out artifacts/bench/bench_quality.json
    python benchmarks/bench_quality.py --quick --out /tmp/bq.json        # 2 models, 1 process
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

DEFAULT_EXCLUDE = ("efficientnet_b7", "vgg16")
QUICK_MODELS = ("mobilenet_v3_small", "resnet18")
# Outside every registry family (resnet, efficientnet, mobilenet_v3, vgg, tiny): channel shuffle,
# fire modules, grouped-conv stages, MnasNet's inverted residuals without SE.
HELD_OUT = ("shufflenet_v2_x1_0", "squeezenet1_1", "regnet_x_400mf", "mnasnet1_0")
QUICK_HELD_OUT = ("squeezenet1_1",)
# The demo's input size, where fixed per-op costs dominate (`fopt.bench.costmodel.probes.SMALL_BRANCHES`).
SMALL_SIZE = 64
SMALL_MODELS = ("resnet18",)
GOALS = {"held_out_within_25": 0.6, "coverage": 0.8, "median_half_width_pct": 40.0, "in_family_within_25": 0.8}
NUM_CLASSES = 22
BAND_PCT = 25.0
KEYS = ("torch-eager/fp32", "onnxruntime/fp32", "onnxruntime/int8")
CALIB_IMAGES = 32        # static INT8 calibration images (fopt's minimum)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- artifacts

def calibration_images(work: Path, size: int) -> Path:
    """A folder of synthetic garment images (real pictures, not random tensors) for static INT8."""
    from fopt.data.synth import synthesize
    from fopt.errors import OutputExistsError

    args = {"classes": 4, "per_class": 10, "size": min(max(size, 64), 512), "seed": 0}
    try:
        return synthesize(work / "calib_images", **args)
    except OutputExistsError:  # our own work folder, made by an older fopt with other settings
        return synthesize(work / "calib_images", force=True, **args)


def use_private_cache(work: Path) -> Path:
    """Point fopt's cache ($FOPT_CACHE_DIR) at ``<work>/cache`` for this process and every process
    it starts, so that calibrating here never replaces the user's own calibration; returns it."""
    root = (work / "cache").resolve()
    os.environ["FOPT_CACHE_DIR"] = str(root)
    return root


def int8_static(fp32: Path, calib_dir: Path, hints=None) -> Path:
    """Static INT8 of an ONNX file the way a user makes it: `fopt optimize --int8-static` on
    32 images of `calib_dir`, no evaluation, no timing (bench does that)."""
    from fopt.optimize.run import OptimizeOptions, optimize_onnx

    optimize_onnx(fp32, OptimizeOptions(methods=("int8-static",), out_dir=str(fp32.parent), calib_data=str(calib_dir),
                                        calib_size=CALIB_IMAGES, hints=hints, int8_target="ort", evaluate=False,
                                        latency=False, force=True))
    out = fp32.with_name(fp32.name[:-len(".onnx")] + ".int8.onnx")
    if not out.exists():
        raise RuntimeError(f"fopt optimize did not write {out.name}")
    return out


def build_artifacts(model: str, size: int, work: Path, calib_dir: Callable[[], Path]) -> dict[str, Path]:
    """checkpoint (torch eager), FP32 ONNX (fopt's exporter, carded) and its static INT8
    (`fopt optimize`) of one registry model."""
    import onnx
    import torch

    from fopt.artifacts import InputSpec, make_card, write_card
    from fopt.checkpoint import save_checkpoint
    from fopt.export.onnx import model_to_onnx
    from fopt.models import build_model

    stem = work / f"{model}_{size}"
    paths = {"torch-eager/fp32": stem.with_suffix(".pt"), "onnxruntime/fp32": stem.with_suffix(".onnx"),
             "onnxruntime/int8": stem.with_name(stem.name + ".int8.onnx")}
    if all(p.exists() and p.with_name(p.name + ".json").exists() for p in paths.values()):
        return paths
    classes = [f"class_{i}" for i in range(NUM_CLASSES)]
    spec = InputSpec(size=size)
    torch.manual_seed(0)
    net = build_model(model, NUM_CLASSES).eval()
    info = {"name": model, "kwargs": {"num_classes": NUM_CLASSES}}
    save_checkpoint(paths["torch-eager/fp32"], net, model_name=model, model_kwargs=info["kwargs"],
                    class_names=classes, input_spec=spec, config={"weights": "random (bench_quality)"})
    onnx.save(model_to_onnx(net, size), str(paths["onnxruntime/fp32"]))
    write_card(paths["onnxruntime/fp32"], make_card(kind="onnx", format="onnx", precision="fp32", input_spec=spec,
                                                    class_names=classes, parent=paths["torch-eager/fp32"],
                                                    model=info, opset=17))
    int8_static(paths["onnxruntime/fp32"], calib_dir())
    return paths


def build_held_out(name: str, size: int, work: Path, calib_dir: Callable[[], Path]) -> dict[str, Path]:
    """FP32 ONNX of a torchvision classifier exported with plain torch.onnx.export and no card (a
    foreign file, as a user brings it), and its static INT8 made by `fopt optimize` with the
    normalisation stated the way a user states it (``--preset``)."""
    import torch
    import torchvision

    from fopt.describe.hints import ModelHints

    stem = work / f"heldout_{name}_{size}"
    paths = {"onnxruntime/fp32": stem.with_suffix(".onnx"), "onnxruntime/int8": stem.with_name(stem.name + ".int8.onnx")}
    if paths["onnxruntime/fp32"].exists() and paths["onnxruntime/int8"].with_name(
            paths["onnxruntime/int8"].name + ".json").exists():
        return paths
    torch.manual_seed(0)
    net = getattr(torchvision.models, name)(weights=None, num_classes=NUM_CLASSES).eval()
    torch.onnx.export(net, (torch.randn(1, 3, size, size),), str(paths["onnxruntime/fp32"]), input_names=["input"],
                      output_names=["logits"], opset_version=17, dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                      dynamo=False)
    int8_static(paths["onnxruntime/fp32"], calib_dir(), ModelHints(preset="inception"))
    return paths


def reestimate(res, cal_file: Path, threads: int, clock: str) -> list[dict[str, Any]]:
    """The rows of `res` (measured once) priced again with the calibration in `cal_file` (a cache
    file of `fopt bench --calibrate`): two calibrations compared on the same measurements, so that
    the comparison is not drowned by the machine's noise between runs."""
    import copy
    import json

    from fopt.bench.costmodel.cache import Calibration
    from fopt.bench.estimates import estimate_rows
    from fopt.describe.infer import cards_for

    doc = json.loads(Path(cal_file).read_text())
    entries = [e for e in (doc.get("entries") or {}).values()
               if e.get("device") == "cpu" and e.get("threads") == threads and e.get("clock", "wall") == clock]
    if not entries:
        raise SystemExit(f"{cal_file}: no CPU calibration for {threads} thread(s), clock {clock}")
    cal = Calibration(max(entries, key=lambda e: e.get("created", "")))
    cal["path"] = str(cal_file)
    rows = copy.deepcopy(res.results)
    estimate_rows(rows, cal=cal, machine=res.machine, per_layer=False, threads=threads, clock=clock,
                  cards=cards_for(sorted({r.artifact for r in rows})))
    return [r.to_dict() for r in rows]


# ----------------------------------------------------------------------------- analysis

def family_summary(rows: list[dict[str, Any]], held_out: set[str], small: set[str] = frozenset()) -> dict[str, Any]:
    """In-family, held-out and (when measured) small-input rows apart: within +-25% and the 80%
    bands' coverage and median half-width, for the calibrated and roofline estimates."""
    from fopt.bench.report import band_coverage

    def group(r: dict[str, Any]) -> str:
        a = str(Path(r["artifact"]))
        return "held_out" if a in held_out else "small_input" if a in small else "in_family"

    out: dict[str, Any] = {}
    for fam in ("in_family", "held_out", "small_input"):
        ok = [r for r in rows if group(r) == fam and r["status"] == "ok"]
        if fam == "small_input" and not ok:
            continue
        out[fam] = {est: {**_within([r["error_pct"][est] for r in ok if r["error_pct"].get(est) is not None]),
                          "band": band_coverage(ok, est)} for est in ("calibrated", "roofline")}
    return out


def goals_verdict(fam: dict[str, Any]) -> list[str]:
    """The issue's four goals, each measured, each PASS or FAIL."""
    lines = []
    ino, held = fam["in_family"]["calibrated"], fam["held_out"]["calibrated"]

    def check(label: str, value: float | None, ok: Callable[[float], bool], fmt: str) -> None:
        if value is None:
            lines.append(f"{label}: not measured")
        else:
            lines.append(f"{label}: {fmt.format(value)} {'PASS' if ok(value) else 'FAIL'}")

    check("held-out within +-25% (goal >= 60%)", held["within_25"], lambda v: v >= GOALS["held_out_within_25"],
          "{:.0%}")
    for name, f in (("in-family", ino), ("held-out", held)):
        check(f"{name} 80% band coverage (goal >= 80%)", f["band"]["coverage"], lambda v: v >= GOALS["coverage"],
              "{:.0%}")
    halves = [f["band"]["median_half_width_pct"] for f in (ino, held) if f["band"]["median_half_width_pct"] is not None]
    check("median band half-width (goal <= 40%)", max(halves) if halves else None,
          lambda v: v <= GOALS["median_half_width_pct"], "{:.0f}%")
    check("in-family within +-25% (goal >= 80%)", ino["within_25"], lambda v: v >= GOALS["in_family_within_25"],
          "{:.0%}")
    small = (fam.get("small_input") or {}).get("calibrated")
    if small:   # the "small inputs": the demo's rows inside their bands
        check("small-input 80% band coverage (goal >= 80%)", small["band"]["coverage"],
              lambda v: v >= GOALS["coverage"], "{:.0%}")
    return lines


def _key(row: dict[str, Any]) -> str:
    base = "torch-eager" if row.get("backend") in ("torch-eager", "torchscript") else row.get("backend")
    return f"{base}/{row.get('precision')}"


def _within(errs: list[float]) -> dict[str, Any]:
    if not errs:
        return {"points": 0, "within_25": None, "median_abs_pct": None}
    a = [abs(e) for e in errs]
    return {"points": len(errs), "within_25": sum(x <= BAND_PCT for x in a) / len(a),
            "median_abs_pct": statistics.median(a)}


def _error_without_faults(row: dict[str, Any]) -> float | None:
    """The calibrated error without its page-fault term (the one term that uses a count taken
    in the measured run), so that the term's contribution is visible."""
    cal, p50 = row["estimate_ms"].get("calibrated"), (row.get("latency_ms") or {}).get("p50")
    if cal is None or not p50:
        return None
    return ((cal - (row.get("estimate_detail") or {}).get("page_faults_ms", 0.0)) / p50 - 1.0) * 100.0


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for group in (*KEYS, "all"):
        sel = [r for r in rows if r["status"] == "ok" and (group == "all" or _key(r) == group)]
        out[group] = {est: _within([r["error_pct"][est] for r in sel if r["error_pct"].get(est) is not None])
                      for est in ("calibrated", "naive", "roofline")}
        out[group]["calibrated_without_page_faults"] = _within(
            [e for e in map(_error_without_faults, sel) if e is not None])
    return out


def reason(row: dict[str, Any], cal: dict[str, Any] | None) -> str:
    """Why a point is off: the kernel class whose estimate is furthest from its profiled time."""
    parts = []
    layers = row.get("layers") or []
    delta_s = 0.0
    if cal and row.get("backend") == "onnxruntime":
        delta_s = cal.get("backends", {}).get(_key(row), {}).get("node_delta_s", 0.0)
    by_class: dict[str, list[float]] = {}
    for x in layers:
        if x.get("measured_ms") is None or x.get("estimate_ms") is None:
            continue
        acc = by_class.setdefault(x["class"], [0.0, 0.0, 0])
        acc[0] += x["estimate_ms"]
        acc[1] += max(0.0, x["measured_ms"] - delta_s * 1e3)  # profiled time, less the profiler's cost
        acc[2] += 1
    if by_class:
        cls, (est, meas, n) = max(by_class.items(), key=lambda kv: abs(kv[1][0] - kv[1][1]))
        parts.append(f"{cls} x{n}: estimated {est:.2f} ms vs profiled {meas:.2f} ms")
        total_meas = sum(v[1] for v in by_class.values())
        total_est = sum(v[0] for v in by_class.values())
        if total_meas and abs(total_est / total_meas - 1) * 100 + BAND_PCT < abs(row["error_pct"]["calibrated"] or 0):
            parts.append(f"node sum {total_est:.2f} ms vs profiled {total_meas:.2f} ms: the rest is "
                         f"between nodes (per-node/run overhead) or measurement noise")
    if row.get("spread_pct") is not None and row["spread_pct"] > BAND_PCT:
        parts.append(f"measured p50 differs {row['spread_pct']:.0f}% between processes")
    parts += [n for n in row.get("estimate_notes") or [] if "not calibrated" in n or "element-wise" in n]
    return "; ".join(parts) or "no per-layer profile"


def worst_points(rows: list[dict[str, Any]], cal: dict[str, Any] | None, n: int = 8) -> list[dict[str, Any]]:
    ok = [r for r in rows if r["status"] == "ok" and r["error_pct"].get("calibrated") is not None]
    ok.sort(key=lambda r: -abs(r["error_pct"]["calibrated"]))
    return [{"artifact": Path(r["artifact"]).name, "backend": _key(r), "batch_size": r["batch_size"],
             "measured_p50_ms": r["latency_ms"]["p50"], "calibrated_ms": r["estimate_ms"]["calibrated"],
             "error_pct": r["error_pct"]["calibrated"], "naive_error_pct": r["error_pct"].get("naive"),
             "spread_pct": r.get("spread_pct"), "reason": reason(r, cal)} for r in ok[:n]]


def calibration_spells(cal: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per ONNX Runtime backend, {batch: slowest / fastest timing} of the calibration's chain
    network (`fopt.bench.costmodel.bands.chain_spells`): how much the machine's speed moved."""
    from fopt.bench.costmodel.bands import chain_spells

    per_backend = {key: chain_spells(backend) for key, backend in (cal.get("backends") or {}).items()}
    return {key: per for key, per in per_backend.items() if per}


def print_report(summary: dict[str, Any], worst: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    from fopt.console import print_table

    table = []
    for group, s in summary.items():
        c, nv, rf = s["calibrated"], s["naive"], s["roofline"]
        nf = s["calibrated_without_page_faults"]
        table.append({"backend": group, "points": c["points"],
                      "calibrated within 25%": _pct(c["within_25"]), "calibrated median |err|": _pct1(c["median_abs_pct"]),
                      "without page faults within 25%": _pct(nf["within_25"]),
                      "naive within 25%": _pct(nv["within_25"]), "naive median |err|": _pct1(nv["median_abs_pct"]),
                      "roofline within 25%": _pct(rf["within_25"]), "roofline median |err|": _pct1(rf["median_abs_pct"])})
    print_table(table, title="estimate quality (out of sample: calibrated on synthetic probes only)")
    points = [{"artifact": Path(r["artifact"]).name, "backend": _key(r), "batch": r["batch_size"],
               "p50 ms": r["latency_ms"]["p50"] if r.get("latency_ms") else None,
               "spread": f"{r['spread_pct']:.0f}%" if r.get("spread_pct") is not None else None,
               "calibrated ms": r["estimate_ms"].get("calibrated"),
               "error": _signed(r["error_pct"].get("calibrated")), "naive error": _signed(r["error_pct"].get("naive")),
               "status": r["status"] if r["status"] == "ok" else r.get("error")}
              for r in rows]
    print_table(points, title="every point")
    print("worst points (calibrated estimate) and why:")
    for w in worst:
        spread = f", spread {w['spread_pct']:.0f}%" if w.get("spread_pct") is not None else ""
        print(f"  {w['artifact']} [{w['backend']}] b{w['batch_size']}: measured {w['measured_p50_ms']:.3g} ms, "
              f"calibrated {w['calibrated_ms']:.3g} ms ({_signed(w['error_pct'])}; naive {_signed(w['naive_error_pct'])}"
              f"{spread})\n      {w['reason']}")


def print_families(fam: dict[str, Any]) -> None:
    from fopt.console import print_table

    table = []
    for name, f in fam.items():
        for est in ("calibrated", "roofline"):
            e = f[est]
            table.append({"models": name, "estimate": est, "points": e["points"],
                          "within 25%": _pct(e["within_25"]), "median |err|": _pct1(e["median_abs_pct"]),
                          "80% band coverage": _pct(e["band"]["coverage"]),
                          "median band half-width": _pct1(e["band"]["median_half_width_pct"])})
    print_table(table, title="in-family vs held-out (held-out: families no probe or tuning decision saw)")


def _pct(v: float | None) -> str | None:
    return None if v is None else f"{v * 100:.0f}%"


def _pct1(v: float | None) -> str | None:
    return None if v is None else f"{v:.0f}%"


def _signed(v: float | None) -> str | None:
    return None if v is None else f"{v:+.0f}%"


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("artifacts/bench/bench_quality.json"), help="JSON file to write")
    ap.add_argument("--models", nargs="+", default=None, help="default: the registry minus efficientnet_b7, vgg16")
    ap.add_argument("--long", action="store_true", help="also efficientnet_b7 and vgg16 (slow)")
    ap.add_argument("--quick", action="store_true", help=f"{', '.join(QUICK_MODELS)}; 1 process; short timing")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--threads", type=int, default=None, help="default: the physical cores available")
    ap.add_argument("--processes", type=int, default=3, help="fresh measuring processes per artifact")
    ap.add_argument("--min-time", type=float, default=1.5, help="seconds of timing per row and process")
    ap.add_argument("--recalibrate", action="store_true", help="re-run `fopt bench --calibrate` first")
    ap.add_argument("--any-calibration", action="store_true",
                    help="use the cached calibration even if the machine was busy while it was made")
    ap.add_argument("--held-out", nargs="*", default=None,
                    help=f"torchvision classifiers outside the registry families (default: {' '.join(HELD_OUT)}; "
                         f"with --quick {' '.join(QUICK_HELD_OUT)}); no name: none")
    ap.add_argument("--small-size", type=int, default=SMALL_SIZE,
                    help=f"also measure --small-models at this input size (the demo's; default {SMALL_SIZE}); 0: not")
    ap.add_argument("--small-models", nargs="+", default=list(SMALL_MODELS), help="registry models for --small-size")
    ap.add_argument("--compare-calibration", type=Path, default=None, metavar="CACHE_FILE",
                    help="also price the same measured rows with this calibration cache file and report both")
    ap.add_argument("--clock", default="wall", choices=["wall", "thread-cpu"],
                    help="thread-cpu (with --threads 1): CPU time, for a machine other work shares")
    args = ap.parse_args(argv)

    from fopt.bench.costmodel.cache import load_machine_calibration
    from fopt.bench.costmodel.calibrate import calibrate
    from fopt.bench.measure.machine import default_threads
    from fopt.bench.plots import plot_all
    from fopt.bench.run import bench_artifacts
    from fopt.models import MODELS

    t0 = time.perf_counter()
    threads = args.threads or default_threads()
    if args.models:
        models = list(args.models)
    elif args.quick:
        models = list(QUICK_MODELS)
    else:
        models = [m for m in MODELS.names() if args.long or m not in DEFAULT_EXCLUDE]
    processes = 1 if args.quick else args.processes
    min_time = min(args.min_time, 0.4) if args.quick else args.min_time
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    held_models = list(args.held_out if args.held_out is not None else (QUICK_HELD_OUT if args.quick else HELD_OUT))
    work = args.out.with_name(args.out.stem + "_work")
    work.mkdir(parents=True, exist_ok=True)
    log(f"calibration cache: {use_private_cache(work)} (this run's own; the user's is never touched)")
    small_models = list(args.small_models) if args.small_size and args.small_size != args.img_size else []

    cal = None if args.recalibrate else load_machine_calibration("cpu", threads, args.clock)
    if cal is not None and cal.get("quick"):
        cal = None  # made with the reduced test probe set
    for attempt in range(3):
        if cal is not None and (args.any_calibration or (cal.get("stability") or {}).get("stable", True)):
            break
        if cal is not None:
            log(f"  the machine was busy during that calibration (GEMM rate changed "
                f"{cal['stability']['gemm_change_pct']:.0f}%): again")
        # the full probe set even with --quick: the reduced one is for tests, not for estimates
        log(f"calibrating this machine ({threads} threads)")
        calibrate("cpu", threads, clock=args.clock, on_step=lambda m: log(f"  calibrating: {m}"))
        cal = load_machine_calibration("cpu", threads, args.clock)
    log(f"calibration of {cal['created']} ({cal['path']})")
    spells = calibration_spells(cal)
    if spells:   # how steady the machine was: bands widen by it, and no estimate follows it
        log("  the same network of probe layers, slowest / fastest of its timings in the calibration: "
            + ", ".join(f"{k} b{b} x{r:.2f}" for k, per in spells.items() for b, r in per.items()))

    cache: dict[str, Any] = {}

    def calib() -> Path:  # made once, and only when an INT8 model has to be built
        if "dir" not in cache:
            cache["dir"] = calibration_images(work, args.img_size)
        return cache["dir"]

    build_errors: dict[str, str] = {}

    def build_group(prefix: str, label: str, names, build) -> list[Path]:
        """Every model's artifacts; one that cannot be built is reported (under `prefix` + its
        name in the JSON's build_errors), the rest still run."""
        if names:
            log(f"building {label}: " + ", ".join(names))
        out: list[Path] = []
        for m in names:
            try:
                out += list(build(m).values())
            except Exception as e:
                key = prefix + m
                build_errors[key] = f"{type(e).__name__}: {e}"
                log(f"  {key}: cannot build artifacts: {build_errors[key]}")
        return out

    paths = build_group("", "artifacts", models, lambda m: build_artifacts(m, args.img_size, work, calib))
    held_paths = build_group("held-out ", "held-out artifacts (torchvision + torch.onnx.export)", held_models,
                             lambda m: build_held_out(m, args.img_size, work, calib))
    small_paths = build_group("small ", f"small-input artifacts ({args.small_size} px)", small_models,
                              lambda m: build_artifacts(m, args.small_size, work, calib))
    paths += held_paths + small_paths
    log(f"measuring {len(paths)} artifacts x batch {batch_sizes} in {processes} process(es) each")
    res = bench_artifacts(paths, batch_sizes=batch_sizes, threads=threads, min_time_s=min_time,
                          processes=processes, estimate=True, per_layer=True, clock=args.clock, on_progress=log)
    data = res.to_dict()
    rows = data["results"]
    # the headline scores are the --img-size points; the small-input ones are reported apart
    main_rows = [r for r in rows if str(Path(r["artifact"])) not in {str(p) for p in small_paths}]
    summary = summarise(main_rows)
    worst = worst_points(rows, cal)
    print_report(summary, worst, rows)
    families = family_summary(rows, {str(p) for p in held_paths}, {str(p) for p in small_paths})
    goals = goals_verdict(families)
    print_families(families)
    for line in goals:
        log(line)
    compared = None
    if args.compare_calibration:
        log(f"pricing the same rows with {args.compare_calibration}")
        other = reestimate(res, args.compare_calibration, threads, args.clock)
        compared = {"calibration": str(args.compare_calibration),
                    "summary": summarise([r for r in other if str(Path(r["artifact"])) not in
                                          {str(p) for p in small_paths}]),
                    "families": family_summary(other, {str(p) for p in held_paths}, {str(p) for p in small_paths}),
                    "results": [{"artifact": r["artifact"], "backend": _key(r), "batch_size": r["batch_size"],
                                 "estimate_ms": r["estimate_ms"], "estimate_band_ms": r.get("estimate_band_ms"),
                                 "error_pct": r["error_pct"]} for r in other]}
        compared["goals"] = goals_verdict(compared["families"])
        print(f"the same rows priced with {args.compare_calibration}:")
        print_families(compared["families"])
        for line in compared["goals"]:
            log(f"  [compared] {line}")
    overall = summary["all"]["calibrated"]
    verdict = (None if overall["within_25"] is None else
               f"{overall['within_25'] * 100:.0f}% of {overall['points']} points within +-25% "
               f"(bar: 80%): {'PASS' if overall['within_25'] >= 0.8 else 'FAIL'}")
    log(verdict or "no points")
    load = None
    try:
        import os

        load = os.getloadavg()
    except (AttributeError, OSError):
        pass
    doc = {"benchmark": "bench_quality", "verdict": verdict, "summary": summary, "worst": worst,
           "families": families, "goals": goals, "held_out_models": held_models,
           "small_input": {"size": args.small_size if small_models else None, "models": small_models},
           "compared_calibration": compared,
           "settings": {"models": models, "img_size": args.img_size, "batch_sizes": batch_sizes, "threads": threads,
                        "processes": processes, "min_time_s": min_time, "clock": args.clock,
                        "weights": "random", "classes": NUM_CLASSES,
                        "band_pct": BAND_PCT, "quick": args.quick, "load_average_at_end": load,
                        "calibration": {"created": cal["created"], "quick": cal.get("quick"), "path": cal.get("path"),
                                        "duration_s": cal.get("duration_s"), "stability": cal.get("stability"),
                                        "spells": spells}},
           "build_errors": build_errors, "seconds": round(time.perf_counter() - t0, 1),
           "machine": data["machine"], "results": rows}
    from fopt.artifacts import write_json_atomic

    write_json_atomic(args.out, doc)
    plots = plot_all(data, args.out.with_name(args.out.stem + "_plots"))
    log(f"wrote {args.out} and {len(plots)} plots in {args.out.stem}_plots/ ({doc['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
