"""`optimize_onnx`: every requested method on one FP32 ONNX file, then what each one costs.

Order of work, so that a bad input fails before anything is written:

1. Read and check the ONNX file and its card; refuse an already quantized / FP16 file for the
   quantization and FP16 methods (a TensorRT engine may still be built from it).
2. Check that TensorRT and a GPU exist when ``tensorrt`` is asked for, and OpenVINO and NNCF when
   ``openvino`` is (``--all`` skips either with a note instead), that no output exists (unless forced), and load the calibration images.
3. Produce the artifacts (`fopt.optimize.base.produce`): dynamic INT8, static INT8 (ONNX Runtime
   flavour, plus the TensorRT flavour when engines are built), the precision search's mixed
   INT8 graph (`--search`, `fopt.optimize.search`, on the same calibration), FP16, then TensorRT engines from
   the FP32 input and from the FP16 / INT8-TensorRT files just written; OpenVINO IR (FP32, and
   NNCF INT8 on the same calibration images). An OpenVINO step that fails (an op its ONNX
   frontend lacks) is a failed row; the other artifacts go on.
4. Evaluate the FP32 parent and every artifact on the validation split of the dataset
   (``--eval``, else the dataset recorded in the lineage), time each at batch 1 (quick check),
   write the metrics into each card and return one row per artifact.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from fopt.artifacts import InputSpec, image_spec, update_card_metrics
from fopt.data.datasets import DatasetTable
from fopt.describe.hints import ModelHints
from fopt.describe.infer import describe_model
from fopt.errors import InputError, OutputExistsError, UsageError, one_line
from fopt.onnxgraph import (
    check_onnx,
    graph_summary,
    load_onnx,
    param_count,
    precision_of,
)
from fopt.optimize import report
from fopt.optimize.base import METHODS, OptimizeError, Produced, output_path, produce
from fopt.optimize.calib import DEFAULT_CALIB, load_calibration_set, validate_calib_size
from fopt.optimize.fp16 import CPU_NOTE
from fopt.evaluation import INDEX_MAP_NOTE, check_class_map
from fopt.optimize.lineage import lineage_dataset
from fopt.optimize.quantize import (
    CALIB_METHODS,
    DEFAULT_CALIB_METHOD,
    DYNAMIC_DEFAULT_OPS,
)
from fopt.optimize.openvino import require_openvino
from fopt.optimize.search import check_search_settings
from fopt.runtime.openvino import openvino_unavailable_reason
from fopt.runtime.tensorrt import require_tensorrt, tensorrt_unavailable_reason

USER_METHODS = ("int8-dynamic", "int8-static", "fp16", "tensorrt", "openvino")
CALIBRATED = ("int8-static", "int8-static-trt", "int8-mixed", "openvino-int8")   # methods that need real images
STATIC_INT8 = ("int8-static", "int8-static-trt", "int8-mixed")   # onnxruntime's quantizer: one shared calibration
INT8_TARGETS = ("auto", "ort", "tensorrt", "both")
ACCURACY_HINT_PTS = 1.0  # an INT8 drop beyond this (accuracy or macro-F1) gets a what-to-try note


@dataclass
class OptimizeOptions:
    methods: tuple[str, ...] = ()
    all_methods: bool = False
    out_dir: str | None = None            # default: beside the input model
    eval_dir: str | None = None           # default: the lineage dataset
    evaluate: bool = True
    latency: bool = True
    force: bool = False
    # dynamic INT8
    op_types: tuple[str, ...] = DYNAMIC_DEFAULT_OPS
    # static INT8
    calib_data: str | None = None         # default: the lineage dataset (train split)
    calib_size: int | None = None         # default: 256, or every image if 32..255 exist
    calib_method: str = DEFAULT_CALIB_METHOD
    exclude: tuple[str, ...] = ()
    keep_fp32: tuple[str, ...] = ()
    per_channel: bool = True
    reduce_range: bool | None = None      # None: 7-bit weights where this CPU needs them
    int8_target: str = "auto"             # auto = "both" when engines are built, else "ort"
    seed: int = 0
    # per-layer precision search (fopt.optimize.search); None: on with --all, else off
    search: bool | None = None
    search_runtime: str = "onnxruntime"
    search_max_drop: float = 1.0   # points of calibration-image score below FP32 allowed
    # TensorRT
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 64                   # covers the default evaluation batch (64)
    workspace_mb: int = 2048
    timing_cache: str | None = None       # default: OUT/tensorrt.timing.cache
    # measurement
    threads: int | None = None
    eval_batch_size: int = 64
    # what the user says about an input fopt did not make (input shape, normalisation, classes)
    hints: ModelHints | None = None

    def validate(self) -> "OptimizeOptions":
        unknown = [m for m in self.methods if m not in USER_METHODS]
        if unknown:
            raise UsageError(f"unknown method {unknown[0]!r}; choose from {', '.join(USER_METHODS)}")
        if not self.methods and not self.all_methods:
            raise UsageError("no method chosen: pass --int8-dynamic, --int8-static, --fp16, "
                             "--tensorrt, --openvino or --all")
        if self.calib_method not in CALIB_METHODS:
            raise UsageError(f"--calib-method must be one of {', '.join(CALIB_METHODS)}")
        if self.int8_target not in INT8_TARGETS:
            raise UsageError(f"--int8-target must be one of {', '.join(INT8_TARGETS)}")
        validate_calib_size(self.calib_size)
        if self.search and not (self.all_methods or "int8-static" in self.methods):
            raise UsageError("--search chooses which layers of the static INT8 graph stay FP32: "
                             "pass it with --int8-static (or --all)")
        check_search_settings(self.search_runtime, self.search_max_drop)
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {self.threads}")
        if self.eval_batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {self.eval_batch_size}")
        return self

    @property
    def searching(self) -> bool:
        """Whether the precision search runs (asked for, or by default with --all)."""
        return self.search if self.search is not None else self.all_methods


@dataclass
class _Step:
    method: str            # registry name
    source: Path
    target: Path
    settings: dict[str, Any] = field(default_factory=dict)
    precision: str | None = None


Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# ----------------------------------------------------------------------------- input checks

def inspect_input(path: Path, hints: ModelHints | None = None) -> dict[str, Any]:
    """Load/check the ONNX file; returns its card (its own, or one described from the file and
    `hints` when fopt did not make it), graph summary and precision."""
    model = load_onnx(path)
    check_onnx(path)
    card = describe_model(path, hints)
    if card.get("format") != "onnx":
        raise InputError(f"{path}: a {card.get('format')} file; optimize takes an ONNX model")
    summary = graph_summary(model)
    return {"card": card, "summary": summary, "precision": precision_of(model),
            "contrib_ops": sorted({n.op_type for n in model.graph.node if n.domain == "com.microsoft"})}


def tensorrt_compatible(info: dict[str, Any]) -> str | None:
    """None if TensorRT can build from this ONNX file, else why not."""
    s = info["summary"]
    if info["contrib_ops"]:
        return f"it uses ONNX Runtime contrib ops ({', '.join(info['contrib_ops'])})"
    if s["integer_ops"]:
        return "it is dynamically quantized (ConvInteger/MatMulInteger), which TensorRT cannot run"
    if "uint8" in s["activation_types"]:
        return "its activations are uint8 (the ONNX Runtime INT8 flavour); TensorRT needs symmetric int8"
    return None


def _refuse_non_fp32(path: Path, info: dict[str, Any], methods: list[str]) -> None:
    if info["precision"] == "fp32":
        return
    s = info["summary"]
    what = (f"already quantized ({s['quantize_linear']} QuantizeLinear, {s['dequantize_linear']} "
            f"DequantizeLinear, {sum(s['integer_ops'].values()) + sum(s['quantized_ops'].values())} "
            f"quantized ops)" if info["precision"] == "int8"
            else f"already FP16 ({s['fp16_initializers']} FP16 initializers)")
    flags = ", ".join(f"--{m}" for m in methods)
    raise InputError(f"{path}: {what}; {flags} need the FP32 ONNX export (TensorRT engines can "
                     f"still be built from this file with --tensorrt alone)")


# ----------------------------------------------------------------------------- planning

def _plan(path: Path, info: dict[str, Any], methods: list[str], opts: OptimizeOptions,
          out_dir: Path) -> list[_Step]:
    steps: list[_Step] = []
    if "int8-dynamic" in methods:
        steps.append(_Step("int8-dynamic", path, output_path(METHODS.get("int8-dynamic"), path, out_dir),
                           {"op_types": tuple(opts.op_types)}))
    static_targets: list[str] = []
    if "int8-static" in methods:
        target = opts.int8_target
        if target == "auto":
            target = "both" if "tensorrt" in methods else "ort"
        static_targets = ["tensorrt", "ort"] if target == "both" else [target]
        common = {"calib_method": opts.calib_method, "per_channel": opts.per_channel,
                  "exclude": tuple(opts.exclude), "keep_fp32": tuple(opts.keep_fp32),
                  "reduce_range": opts.reduce_range}
        # The TensorRT flavour calibrates first: its graph has every tensor (no SiLU fusion), so
        # the ONNX Runtime flavour can reuse the ranges from the shared calibration cache.
        for t in static_targets:
            name = "int8-static-trt" if t == "tensorrt" else "int8-static"
            steps.append(_Step(name, path, output_path(METHODS.get(name), path, out_dir),
                               {**common, "target": t}))
        if opts.searching:
            # after the static steps: it reuses their calibration (the shared cache)
            steps.append(_Step("int8-mixed", path, output_path(METHODS.get("int8-mixed"), path, out_dir),
                               {**common, "target": "ort", "runtime": opts.search_runtime,
                                "threads": opts.threads, "max_drop_pts": opts.search_max_drop}))
    if "fp16" in methods:
        steps.append(_Step("fp16", path, output_path(METHODS.get("fp16"), path, out_dir)))
    if "openvino" in methods:   # the FP32 IR and the NNCF INT8 IR
        for name in ("openvino", "openvino-int8"):
            steps.append(_Step(name, path, output_path(METHODS.get(name), path, out_dir)))
    if "tensorrt" in methods:
        engine = METHODS.get("tensorrt")
        sources: list[tuple[Path, str]] = []
        why_not = tensorrt_compatible(info)
        if why_not is None:
            sources.append((path, info["precision"]))
        elif methods == ["tensorrt"]:
            raise InputError(f"{path}: TensorRT cannot build from this file: {why_not}; use the FP32 "
                             f"export, its .fp16.onnx or its .int8-trt.onnx")
        if "fp16" in methods:
            sources.append((output_path(METHODS.get("fp16"), path, out_dir), "fp16"))
        if "tensorrt" in static_targets:
            sources.append((output_path(METHODS.get("int8-static-trt"), path, out_dir), "int8"))
        trt_settings = {"min_batch": opts.min_batch, "opt_batch": opts.opt_batch,
                        "max_batch": opts.max_batch, "workspace_mb": opts.workspace_mb,
                        "timing_cache": Path(opts.timing_cache) if opts.timing_cache
                        else out_dir / "tensorrt.timing.cache"}
        for src, prec in sources:
            steps.append(_Step("tensorrt", src, output_path(engine, src, out_dir), dict(trt_settings), prec))
    return steps


def _resolve_dataset(explicit: str | None, card: dict[str, Any], what: str, log: Log) -> tuple[Path | None, str]:
    if explicit:
        p = Path(explicit)
        if not p.is_dir():
            raise InputError(f"{what} {p}: no such folder")
        return p, "option"
    found = lineage_dataset(card)
    if found is None:
        return None, "none"
    if not found.is_dir():
        log(f"note: the dataset recorded in the model's lineage ({found}) no longer exists")
        return None, "missing"
    return found, "lineage"


# ----------------------------------------------------------------------------- the run

def optimize_onnx(model_path: str | Path, opts: OptimizeOptions, log: Log = _quiet) -> dict[str, Any]:
    """Run the methods in `opts` on one ONNX file; returns rows, artifacts and notes (module doc)."""
    opts.validate()
    path = Path(model_path)
    info = inspect_input(path, opts.hints)
    card = info["card"]
    notes: list[str] = []

    def say(msg: str) -> None:
        notes.append(msg)
        log(msg)

    methods = [m for m in USER_METHODS if m in opts.methods or opts.all_methods]
    if "tensorrt" in methods:
        if opts.all_methods and "tensorrt" not in opts.methods:
            reason = tensorrt_unavailable_reason()
            if reason:
                methods.remove("tensorrt")
                say(f"skipping --tensorrt: {reason}")
        else:
            require_tensorrt()
    if "openvino" in methods:
        reason = openvino_unavailable_reason() if opts.all_methods and "openvino" not in opts.methods else None
        if reason:
            methods.remove("openvino")
            say(f"skipping --openvino: {reason}")
        else:
            require_openvino()
    if opts.search_runtime == "openvino" and opts.searching and "int8-static" in methods:
        require_openvino()
    cpu_methods = [m for m in methods if m != "tensorrt"]
    if cpu_methods:
        _refuse_non_fp32(path, info, cpu_methods)

    if card.get("kind") == "foreign" and not opts.out_dir:
        raise UsageError(f"{path.name} was not made by fopt, which does not write beside a model it did "
                         f"not make: pass --out DIR")
    out_dir = Path(opts.out_dir) if opts.out_dir else path.parent
    steps = _plan(path, info, methods, opts, out_dir)
    if not opts.force:
        for step in steps:
            if step.target.exists():
                raise OutputExistsError(f"{step.target} exists (pass --force to overwrite)")

    calibration = None
    if any(s.method in CALIBRATED for s in steps):
        calib_dir, calib_from = _resolve_dataset(opts.calib_data, card, "--calib-data", log)
        spec = _calibration_spec(path, card, calib_dir)
        calibration = load_calibration_set(calib_dir, spec, opts.calib_size, seed=opts.seed)
        calibration.info["from"] = calib_from
        if opts.calib_size is None and calibration.info["n"] < DEFAULT_CALIB:
            say(f"calibrating on all {calibration.info['n']} images available (fewer than the default 256)")
    if "fp16" in methods:
        say(f"note: {CPU_NOTE}")
    if "int8-dynamic" in methods and "Conv" in opts.op_types:
        say("note: dynamic INT8 of Conv runs as ConvInteger, which is usually slower than FP32 on CPU; "
            "see the speed-up column")

    eval_dir, eval_from = (None, "off")
    if opts.evaluate:
        eval_dir, eval_from = _resolve_dataset(opts.eval_dir, card, "--eval", log)
        if eval_dir is None:
            say("no evaluation, accuracy deltas not measured: pass --eval DATASET_DIR (no dataset is "
                "recorded in the model's lineage)")
        else:
            image_spec(card, path)  # the normalisation is known, or one line says how to give it
            if check_class_map(card, DatasetTable.load(eval_dir).class_names, eval_dir, path.name) == "index":
                say(f"note: {INDEX_MAP_NOTE}")

    produced: list[Produced] = []
    failed: list[tuple[_Step, str]] = []
    with tempfile.TemporaryDirectory(prefix="fopt-calib-") as tmp:
        cache = Path(tmp) / "calibration.json"
        for step in steps:
            settings = dict(step.settings)
            extra: dict[str, Any] = {}
            if step.method in STATIC_INT8:
                settings.update(calibration=calibration, calibration_cache=cache)
            if step.method == "int8-mixed":
                settings.update(card=card, log=log)
            if step.method in CALIBRATED:
                settings.setdefault("calibration", calibration)
                extra["calibration"] = calibration.info
            log(f"{step.method}: {step.source.name} -> {step.target}")
            try:
                p = produce(METHODS.get(step.method), step.source, step.target,
                            _source_card(step, card, produced), force=opts.force, precision=step.precision,
                            card_extra=extra, **settings)
            except OptimizeError as e:
                if not step.method.startswith("openvino"):
                    raise
                # e.g. an op OpenVINO's ONNX frontend lacks: this artifact fails, the others go on
                say(f"{step.method}: failed: {e}")
                failed.append((step, str(e)))
                continue
            log(f"{step.method}: wrote {p.path.name} in {p.seconds:.1f} s")
            if p.record.get("note"):   # e.g. FP16's one-line count of clamped weights
                log(f"{step.method}: note: {p.record['note']}")
            produced.append(p)

    result = _measure(path, info, produced, eval_dir, eval_from, opts, notes, log)
    for step, why in failed:
        result["rows"].append(report.make_row(
            artifact=step.target, method=step.method, precision=METHODS.get(step.method).precision,
            runs_on="openvino cpu", params=None, metrics=None, parent_metrics=None, latency=None,
            parent_latency=None, note=f"failed: {why}"))
    return result


def _calibration_spec(path: Path, card: dict[str, Any], calib_dir: Path | None) -> InputSpec:
    """The image spec static INT8 calibrates with; refuses, naming everything missing, before any
    file is written (it never calibrates on random data)."""
    missing = []
    if calib_dir is None:
        missing.append("real calibration images: --calib-data DIR (a dataset folder or a folder of "
                       "images; none is recorded in the model's lineage)")
    try:
        spec = image_spec(card, path)
    except InputError as e:
        missing.append(str(e).split(": ", 1)[-1])
        spec = None
    if missing:
        raise UsageError(f"static INT8 of {path.name} needs " + "; and ".join(missing))
    return spec


def _source_card(step: _Step, input_card: dict[str, Any], produced: list[Produced]) -> dict[str, Any]:
    """The card of a step's source: an artifact made earlier in this run, else the input's."""
    return next((p.card for p in produced if p.path == step.source), input_card)


# ----------------------------------------------------------------------------- measuring

def _measure(path: Path, info: dict[str, Any], produced: list[Produced], eval_dir: Path | None,
             eval_from: str, opts: OptimizeOptions, notes: list[str], log: Log) -> dict[str, Any]:
    """The FP32 parent's row, then one row (and card metrics) per produced artifact; the result."""
    parent_params = _params_of(path)
    parent_metrics = parent_latency = None
    if eval_dir is not None:
        log(f"evaluating {path.name} on {eval_dir} [val]")
        parent_metrics = report.evaluate(path, eval_dir, "cpu", opts.threads, opts.eval_batch_size,
                                         card=info["card"])
    if opts.latency:
        parent_latency = report.quick_latency_ms(path, "cpu", opts.threads, card=info["card"])
    rows = [report.make_row(artifact=path, method="parent", precision=info["precision"],
                            runs_on="onnxruntime cpu", params=parent_params, metrics=parent_metrics,
                            parent_metrics=parent_metrics, latency=parent_latency,
                            parent_latency=parent_latency, note="FP32 parent")]
    artifacts = []
    for p in produced:
        entry = _measure_artifact(p, path, eval_dir, opts, parent_metrics, parent_latency, log)
        rows.append(entry["row"])
        artifacts.append(entry)
    return {
        "model": str(path.resolve()), "input_precision": info["precision"],
        "dataset": str(eval_dir.resolve()) if eval_dir else None, "dataset_from": eval_from,
        "parent": {"metrics": report.summary(parent_metrics), "latency_b1_quick": parent_latency,
                   "params": parent_params},
        "rows": rows, "artifacts": artifacts, "notes": notes,
        "latency_note": report.QUICK_LATENCY_LABEL if opts.latency else None,
        "options": {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(opts).items()},
                    "hints": opts.hints.to_dict() if opts.hints else None},
    }


def _params_of(p: Path) -> int | None:
    return param_count(load_onnx(p, load_weights=False)) if p.suffix == ".onnx" else None


def _measure_artifact(p: Produced, parent: Path, eval_dir: Path | None, opts: OptimizeOptions,
                      parent_metrics: dict[str, Any] | None, parent_latency: dict[str, Any] | None,
                      log: Log) -> dict[str, Any]:
    """One produced artifact: evaluated, timed, its executed ops listed, its row made and its card
    updated. A failing measurement is noted in the row, never raised: the other artifacts still
    get theirs."""
    is_engine = p.card["format"] == "tensorrt"
    device = "cuda" if is_engine else "cpu"
    runs_on = {"tensorrt": "tensorrt cuda", "openvino": "openvino cpu"}.get(p.card["format"], "onnxruntime cpu")
    problems: list[str] = []
    metrics = latency = None
    if eval_dir is not None:
        log(f"evaluating {p.path.name}")
        try:
            metrics = report.evaluate(p.path, eval_dir, device, opts.threads, _eval_batch_size(p, opts))
        except Exception as e:  # recorded in the row and the JSON, not swallowed
            problems.append(f"eval failed: {one_line(e)}")
    if opts.latency:
        try:
            latency = report.quick_latency_ms(p.path, device, opts.threads)
        except Exception as e:
            problems.append(f"latency failed: {one_line(e)}")
    entry: dict[str, Any] = {"method": p.method, "path": str(p.path), "seconds": p.seconds,
                             "precision": p.card["precision"]}
    if "search" in p.record:
        entry["search"] = p.record["search"]
    if p.card["format"] == "onnx":
        _describe_onnx(entry, p.path, opts.threads, problems)
    # An engine's or IR's parameters are its source ONNX file's (no ONNX graph to count in it).
    params = _params_of(Path(p.card["parent"]["path"])) if p.card["format"] != "onnx" else _params_of(p.path)
    row = report.make_row(artifact=p.path, method=p.method, precision=p.card["precision"],
                          runs_on=runs_on, params=params,
                          metrics=metrics, parent_metrics=parent_metrics, latency=latency,
                          parent_latency=parent_latency, note="")
    if entry.get("ort_requantized"):
        problems.append(f"onnxruntime runs {entry['ort_requantized']} of its float compute nodes as INT8 "
                        f"(it re-fuses the Q/DQ around them)")
    row["note"] = "; ".join(problems + _method_notes(p, row, is_engine, opts))
    _record_in_card(p.path, parent, metrics, latency, row, entry)
    entry["row"] = row
    return entry


def _eval_batch_size(p: Produced, opts: OptimizeOptions) -> int:
    """The evaluation batch, within an engine's optimization profile (it takes no larger batch)."""
    if p.card["format"] == "tensorrt":
        return min(opts.eval_batch_size, int(p.card["tensorrt"]["profile"]["max"][0]))
    return opts.eval_batch_size


def _describe_onnx(entry: dict[str, Any], path: Path, threads: int | None, problems: list[str]) -> None:
    """Add the graph summary and the ops ONNX Runtime executes for an ONNX artifact to `entry`."""
    model = load_onnx(path, load_weights=False)
    entry["graph"] = {k: v for k, v in graph_summary(model).items() if k != "op_counts"}
    try:
        entry["ort_executed_ops"] = report.ort_executed_ops(path, threads)
        entry["ort_executed"] = report.executed_summary(entry["ort_executed_ops"])
        entry["ort_requantized"] = report.ort_requantized(entry["graph"], entry["ort_executed_ops"])
    except Exception as e:
        problems.append(f"onnxruntime cannot load it: {one_line(e)}")


def _method_notes(p: Produced, row: dict[str, Any], is_engine: bool, opts: OptimizeOptions) -> list[str]:
    """What a reader of the table should know about this method's numbers."""
    out = []
    if p.method == "int8-dynamic" and row["speedup"] is not None and row["speedup"] < 1:
        out.append("slower than FP32" + (" (ConvInteger)" if "Conv" in opts.op_types else ""))
    if p.method == "fp16" and not is_engine:
        out.append("GPU target; not faster on CPU")
    if p.method == "int8-static-trt":
        out.append("TensorRT input; slow on ORT CPU by design")
    if p.method == "int8-mixed":
        search = p.record["search"]
        kept = search["kept_fp32_classes"]
        if kept:
            what = f"kept FP32: {', '.join(kept)}"
        elif search["int8_ms"] >= search["fp32_ms"]:
            what = "all-INT8 is no faster than FP32 here and no class kept FP32 changes that: use FP32"
        else:
            what = "INT8 paid for every class: same graph as int8 static"
        out.append(what + f" (searched on {search['runtime']}: {search['mixed_ms']:.3g} ms vs all-INT8 "
                          f"{search['int8_ms']:.3g}, FP32 {search['fp32_ms']:.3g})")
    drops = [row[k] for k in ("d_accuracy_pts", "d_macro_f1_pts") if row[k] is not None]
    if p.method in STATIC_INT8 and drops and min(drops) < -ACCURACY_HINT_PTS:
        out.append(f"drop over {ACCURACY_HINT_PTS:g} pt: try another --calib-method "
                   f"(percentile, entropy) or --keep-fp32 first,last")
    return out


def _record_in_card(path: Path, parent: Path, metrics: dict[str, Any] | None, latency: dict[str, Any] | None,
                    row: dict[str, Any], entry: dict[str, Any]) -> None:
    """Write what was measured on an artifact into its card (nothing when nothing was)."""
    card_metrics: dict[str, Any] = {}
    if metrics is not None:
        card_metrics["val"] = report.summary(metrics)
        card_metrics["delta_vs_parent_pts"] = {"accuracy": row["d_accuracy_pts"],
                                               "macro_f1": row["d_macro_f1_pts"],
                                               "parent": str(parent.resolve())}
    if latency is not None:
        card_metrics["latency_b1_quick"] = {**latency, "speedup_vs_parent": row["speedup"],
                                            "note": report.QUICK_LATENCY_LABEL}
    if "ort_executed_ops" in entry:
        card_metrics["ort_executed_ops"] = entry["ort_executed_ops"]
        card_metrics["ort_requantized"] = entry["ort_requantized"]
    if card_metrics:
        update_card_metrics(path, card_metrics)
