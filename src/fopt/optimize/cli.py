"""`fopt optimize`: parse options, call `fopt.optimize.run.optimize_onnx`, print the table.

No onnx/onnxruntime/torch import at module level: `fopt --help` stays light.
"""

from __future__ import annotations

import click

from fopt.console import (
    csv_option,
    force_option,
    json_option,
    note,
    print_table,
    write_csv,
    write_json,
)
from fopt.describe.hints import hint_options
from fopt.track import track_options, tracked


def _csv_list(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (value or "").split(",") if v.strip())


@click.command("optimize")
@track_options("optimize")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--int8-dynamic", is_flag=True, help="Dynamic INT8 (weights INT8, activations per batch).")
@click.option("--int8-static", is_flag=True, help="Static QDQ INT8 calibrated on real images.")
@click.option("--fp16", is_flag=True, help="FP16 weights/compute, FP32 inputs/outputs (for GPUs).")
@click.option("--tensorrt", is_flag=True, help="TensorRT engine(s): from MODEL and from the FP16/INT8 files "
                                              "made in this run (needs a CUDA GPU and tensorrt).")
@click.option("--openvino", is_flag=True, help="OpenVINO IR: FP32, and NNCF INT8 calibrated on the same real "
                                              "images as --int8-static (needs fopt[openvino]).")
@click.option("--all", "all_methods", is_flag=True, help="Every method this machine supports.")
@click.option("--eval", "eval_dir", type=click.Path(file_okay=False),
              help="Dataset folder to evaluate on (val split). Default: the dataset in MODEL's lineage.")
@click.option("--no-eval", is_flag=True, help="Skip the accuracy evaluation.")
@click.option("--no-latency", is_flag=True, help="Skip the quick batch-1 latency check.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Output folder (default: beside MODEL).")
@json_option
@csv_option
@force_option
@click.option("--op-types", default="MatMul,Gemm", show_default=True,
              help="Dynamic INT8: op types to quantize (comma-separated). Adding Conv makes CNNs slower on CPU.")
@click.option("--calib-data", type=click.Path(file_okay=False),
              help="Static INT8: a dataset folder (train split) or a folder of images. "
                   "Default: the dataset in MODEL's lineage.")
@click.option("--calib-size", type=int, default=None,
              help="Static INT8: calibration images (default 256, or all if 32-255 exist; minimum 32).")
@click.option("--calib-method", type=click.Choice(["avg-minmax", "minmax", "entropy", "percentile"]),
              default="avg-minmax", show_default=True,
              help="Static INT8 activation ranges: avg-minmax = mean over calibration batches of each "
                   "tensor's min/max (robust to outlier images); minmax = global min/max; entropy; "
                   "percentile (99.999%).")
@click.option("--exclude", "exclude", multiple=True,
              help="Static INT8: node name to keep FP32 (repeatable or comma-separated).")
@click.option("--keep-fp32", default="", help="Static INT8: 'first', 'last' or 'first,last' Conv/Gemm to keep FP32.")
@click.option("--per-tensor", is_flag=True, help="Static INT8: per-tensor weight scales (default per-channel).")
@click.option("--reduce-range/--full-range", default=None,
              help="Static INT8: 7-bit or 8-bit weights (default: 7-bit on x86 CPUs without VNNI, where "
                   "ONNX Runtime's U8S8 sums overflow with 8-bit weights; 8-bit elsewhere).")
@click.option("--int8-target", type=click.Choice(["auto", "ort", "tensorrt", "both"]), default="auto",
              show_default=True,
              help="Static INT8 encoding: 'ort' = uint8 activations for ONNX Runtime CPU (MODEL.int8.onnx); "
                   "'tensorrt' = symmetric int8 for TensorRT (MODEL.int8-trt.onnx); auto = both with "
                   "--tensorrt, else ort.")
@click.option("--search/--no-search", default=None,
              help="Static INT8: also search, per node class (depthwise, squeeze-excitation, stem, ...), "
                   "which layers to keep FP32 because their INT8 form is slower here or costs accuracy; "
                   "writes MODEL.int8-mixed.onnx (default: on with --all).")
@click.option("--search-runtime", type=click.Choice(["onnxruntime", "openvino"]), default="onnxruntime",
              show_default=True, help="Runtime the precision search times its candidates on.")
@click.option("--search-max-drop", type=float, default=1.0, show_default=True,
              help="Precision search: points the mixed graph may score below FP32 on the calibration "
                   "images (top-1 accuracy with a dataset's labels, else agreement with FP32) before "
                   "more classes are kept FP32.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the calibration sample.")
@click.option("--min-batch", type=int, default=1, show_default=True, help="TensorRT profile: smallest batch.")
@click.option("--opt-batch", type=int, default=1, show_default=True, help="TensorRT profile: batch to tune for.")
@click.option("--max-batch", type=int, default=64, show_default=True, help="TensorRT profile: largest batch.")
@click.option("--workspace", "workspace_mb", type=int, default=2048, show_default=True,
              help="TensorRT builder workspace limit in MiB.")
@click.option("--timing-cache", type=click.Path(dir_okay=False),
              help="TensorRT timing cache file, reused across builds (default OUT/tensorrt.timing.cache).")
@click.option("--threads", type=int, default=None,
              help="CPU threads for evaluation and latency (default: the runtime's default).")
@click.option("--batch-size", "eval_batch_size", type=int, default=64, show_default=True,
              help="Evaluation batch size.")
@hint_options
def optimize(model, int8_dynamic, int8_static, fp16, tensorrt, openvino, all_methods, eval_dir, no_eval, no_latency,
             out_dir, json_path, csv_path, force, op_types, calib_data, calib_size, calib_method, exclude,
             keep_fp32, per_tensor, reduce_range, int8_target, search, search_runtime, search_max_drop,
             seed, min_batch, opt_batch, max_batch,
             workspace_mb, timing_cache, threads, eval_batch_size, hints):
    """Turn an FP32 ONNX export into INT8, mixed INT8/FP32, FP16, OpenVINO and TensorRT artifacts, each
    with its accuracy cost.

    Every artifact gets a card (<file>.json) and is evaluated on the validation split through its
    own runner; the table shows size, parameters, accuracy and macro-F1 with their change against
    the FP32 parent, and a quick batch-1 latency (use `fopt bench` for real measurements).

    Any ONNX file works, not only fopt's exports: dynamic INT8 and FP16 need nothing more; static
    INT8 needs --calib-data and the normalisation (--preset or --mean/--std); accuracy deltas need
    --eval DATASET (and --classes, or output i is scored as the dataset's class i).

    Example: fopt optimize artifacts/run1/model.onnx --int8-static --int8-dynamic --fp16
    Example: fopt optimize artifacts/run1/model.onnx --int8-static --search
    Example: fopt optimize their.onnx --int8-static --calib-data data/ds --preset imagenet --eval data/ds
    """
    from fopt.optimize.run import OptimizeOptions, optimize_onnx

    methods = tuple(m for m, on in (("int8-dynamic", int8_dynamic), ("int8-static", int8_static),
                                    ("fp16", fp16), ("tensorrt", tensorrt), ("openvino", openvino)) if on)
    opts = OptimizeOptions(
        methods=methods, all_methods=all_methods, out_dir=out_dir, eval_dir=eval_dir,
        evaluate=not no_eval, latency=not no_latency, force=force, op_types=_csv_list(op_types),
        calib_data=calib_data, calib_size=calib_size, calib_method=calib_method,
        exclude=tuple(x for e in exclude for x in _csv_list(e)), keep_fp32=_csv_list(keep_fp32),
        per_channel=not per_tensor, reduce_range=reduce_range, int8_target=int8_target, seed=seed,
        search=search, search_runtime=search_runtime, search_max_drop=search_max_drop,
        min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch, workspace_mb=workspace_mb,
        timing_cache=timing_cache, threads=threads, eval_batch_size=eval_batch_size, hints=hints)
    result = optimize_onnx(model, opts, log=note)
    tracked(result)
    from fopt.optimize.report import ROW_COLUMNS, ROW_HEADERS

    print_table(result["rows"], ROW_COLUMNS, title=f"fopt optimize {result['model']}", headers=ROW_HEADERS)
    note("Δ = change against the FP32 parent in percentage points; × = speed-up over the parent; "
         "* quick latency check")
    for row in result["rows"]:
        note(f"{row['label']}: {row['artifact']} ({row['runs_on']})" + (f": {row['note']}" if row["note"] else ""))
    for a in result["artifacts"]:
        g = a.get("graph")
        if g and a["precision"] == "int8":
            quantized = ", ".join(f"{v} {k}" for k, v in {**g["quantized_ops"], **g["integer_ops"]}.items())
            floats = g["float_compute_nodes"]
            note(f"{a['method']}: quantized {quantized or 'nothing'}; {g['qdq_pairs']} QDQ pairs; "
                 f"stayed FP32: {len(floats)} compute node(s)"
                 f"{': ' + ', '.join(floats[:4]) + (' ...' if len(floats) > 4 else '') if floats else ''}")
        if a.get("search"):
            s = a["search"]
            print_table(s["classes"], ["class", "nodes", "ms_with_it_fp32", "score_with_it_fp32", "kept_fp32", "why"],
                        title=f"precision search on {s['runtime']}, batch 1; same rounds: FP32 "
                              f"{s['screen']['fp32_ms']:.3g} ms, all-INT8 {s['screen']['int8_ms']:.3g} ms, noise "
                              f"{100 * s['screen']['noise']:.0f}%; {s['scored_by']} FP32 {s['fp32_score']:.3f}, "
                              f"all-INT8 {s['int8_score']:.3f}",
                        headers={"ms_with_it_fp32": "ms if FP32", "score_with_it_fp32": f"{s['scored_by']} if FP32",
                                 "kept_fp32": "kept FP32"})
            note(f"{a['method']}: timed afresh: FP32 {s['fp32_ms']:.3g} ms, all-INT8 {s['int8_ms']:.3g} ms, "
                 f"mixed {s['mixed_ms']:.3g} ms ({s['scored_by']} {s['mixed_score']:.3f}; "
                 f"{s['accuracy_step']})")
        if a.get("ort_executed"):
            note(f"{a['method']}: onnxruntime executes {a['ort_executed']}")
    if result["latency_note"]:
        note(f"latency: {result['latency_note']}")
    write_json(json_path, result)
    write_csv(csv_path, result["rows"])
