"""The GPU check: `fopt bench --device cuda` on one model, measured vs estimated, plus the T4 table.

On a machine with a CUDA GPU this (1) builds the model's checkpoint and FP32 ONNX (random
weights, 224 px), (2) runs `fopt optimize` once for static INT8 (both flavours), FP16 and TensorRT, which
builds the FP32, FP16 and INT8 engines (a missing one is a note in the JSON, never silent), (3) calibrates the GPU
(``fopt bench --calibrate --device cuda``: GEMM rate per precision, memory bandwidth, launch gap),
(4) measures every artifact on the GPU at batch 1 and 8 beside the naive, roofline (device table
entry for this GPU, when it has one) and calibrated (roofline with the measured figures)
estimates, and (5) prints the T4-table estimate of the same model, the original study's question.

Without a GPU it writes ``{"skipped": ...}`` and exits 0: the CUDA path was not run.

    python benchmarks/bench_cuda.py --out artifacts/bench/bench_cuda.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


ENGINE_PRECISIONS = ("fp32", "fp16", "int8")


def optimize_methods(tensorrt_reason: str | None) -> tuple[tuple[str, ...], str]:
    """(methods, int8 target) for one `optimize_onnx` call: with TensorRT, INT8 (both QDQ flavours),
    FP16 and engines together, so engines are built from the FP32, FP16 and INT8-TensorRT files;
    without it the ONNX methods only."""
    if tensorrt_reason is None:
        return ("int8-static", "fp16", "tensorrt"), "both"
    return ("int8-static", "fp16"), "ort"


def engines_by_precision(artifacts: list[dict]) -> dict[str, str | None]:
    """{fp32|fp16|int8: engine path or None} from `optimize_onnx`'s artifacts."""
    from fopt.artifacts import read_card

    out: dict[str, str | None] = dict.fromkeys(ENGINE_PRECISIONS)
    for a in artifacts:
        if a.get("method") == "tensorrt":
            out[read_card(a["path"]).get("precision", "fp32")] = str(a["path"])
    return out


def build_optimized(onnx_path, work: Path, max_batch: int, notes: list[str]) -> dict[str, str | None]:
    """INT8/FP16 ONNX files and the FP32, FP16 and INT8 engines; every engine not built is a note."""
    from fopt.optimize.run import OptimizeOptions, optimize_onnx
    from fopt.runtime.tensorrt import tensorrt_unavailable_reason

    reason = tensorrt_unavailable_reason()
    methods, target = optimize_methods(reason)
    engines: dict[str, str | None] = dict.fromkeys(ENGINE_PRECISIONS)
    try:
        opts = OptimizeOptions(methods=methods, out_dir=str(work / "optimized"),
                               calib_data=str(work / "calib_images"), calib_size=32, evaluate=False,
                               latency=False, force=True, int8_target=target, max_batch=max_batch)
        engines = engines_by_precision(optimize_onnx(onnx_path, opts.validate(), log=log)["artifacts"])
    except Exception as e:  # report it and bench what exists
        notes.append(f"optimize {'/'.join(methods)}: {type(e).__name__}: {e}")
        log(notes[-1])
    for prec, path in engines.items():
        if path is None:
            notes.append(f"no {prec.upper()} TensorRT engine: {reason or 'its build failed (see above)'}")
            log(notes[-1])
    return engines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("artifacts/bench/bench_cuda.json"), help="JSON file")
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--min-time", type=float, default=1.0)
    ap.add_argument("--quick", action="store_true", help="batch 1 only, short timing")
    args = ap.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    import torch

    if not torch.cuda.is_available():
        reason = "no CUDA GPU here (torch.cuda.is_available() is False): the CUDA path was not run"
        args.out.write_text(json.dumps({"benchmark": "bench_cuda", "skipped": reason}, indent=2) + "\n")
        print(reason)
        return 0

    from bench_quality import build_artifacts, calibration_images

    from fopt.analyze.roofline import estimate_latency
    from fopt.analyze.run import analyze
    from fopt.bench.costmodel.calibrate import calibrate
    from fopt.bench.plots import plot_all
    from fopt.bench.run import bench_artifacts

    t0 = time.perf_counter()
    batch_sizes = [1] if args.quick else [int(b) for b in args.batch_sizes.split(",")]
    min_time = 0.3 if args.quick else args.min_time
    work = args.out.with_name(args.out.stem + "_work")
    work.mkdir(parents=True, exist_ok=True)
    calib = calibration_images(work, args.img_size)  # also the folder `fopt optimize` calibrates on below
    built = build_artifacts(args.model, args.img_size, work, lambda: calib)
    onnx_path = built["onnxruntime/fp32"]
    notes: list[str] = []
    engines = build_optimized(onnx_path, work, max(batch_sizes), notes)
    artifacts = [built["torch-eager/fp32"], onnx_path]
    opt_dir = work / "optimized"
    if opt_dir.is_dir():
        artifacts += sorted(p for p in opt_dir.iterdir() if p.suffix in (".onnx", ".engine")
                            and p.with_name(p.name + ".json").exists())
    log("calibrating the GPU")
    cal = calibrate("cuda", quick=args.quick, on_step=lambda m: log(f"  calibrating: {m}"))
    log(f"measuring {len(artifacts)} artifacts on the GPU")
    res = bench_artifacts(artifacts, device="cuda", batch_sizes=batch_sizes, min_time_s=min_time, estimate=True,
                          on_progress=log)
    data = res.to_dict()
    t4 = []
    for prec in ("fp32", "fp16", "int8"):
        for b in batch_sizes:
            est = estimate_latency(analyze(str(onnx_path), batch=b, precision=prec, device_spec="t4"), "t4",
                                   precision=prec, batch=b)
            t4.append({"precision": prec, "batch_size": b, "naive_ms": est.naive_ms, "roofline_ms": est.roofline_ms})
    from fopt.bench.report import print_result

    print_result(data)
    print("T4 table estimate of the same model (the original study's question):")
    for r in t4:
        print(f"  {r['precision']} b{r['batch_size']}: naive {r['naive_ms']:.3g} ms, roofline {r['roofline_ms']:.3g} ms")
    doc = {"benchmark": "bench_cuda", "model": args.model, "img_size": args.img_size, "notes": notes,
           "engines": engines,
           "gpu_calibration": cal.get("summary"), "t4_estimate": t4, "seconds": round(time.perf_counter() - t0, 1),
           **data}
    args.out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    plot_all(data, args.out.with_name(args.out.stem + "_plots"))
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
