"""GPU half of issue 5: TensorRT FP32/FP16/INT8 engines of one model vs ONNX Runtime on the CPU.

Steps (each recorded with its status; a failing step does not stop the others):

1. environment: GPU name, compute capability, torch/CUDA/TensorRT/onnxruntime versions;
2. data + model: a synthetic dataset and a short training run on the GPU (no pretrained weights
   offline), exported to FP32 ONNX with its card;
3. `optimize_onnx` with --int8-static (both QDQ flavours), --fp16 and --tensorrt: engines from the
   FP32, FP16 and INT8-TensorRT ONNX files, every artifact evaluated on the validation split
   (ONNX files through ONNX Runtime on the CPU, engines through the TensorRT runner on the GPU);
4. latency through `fopt.bench` at batch 1 and 8: engines on CUDA (CUDA events), ONNX files on the
   CPU with the same thread count;
5. the engine-compatibility guard: a copy of an engine whose card names another GPU must be refused;
6. TensorRT runner parity: engine logits vs ONNX Runtime FP32 logits on the same real images.

Writes OUT/gpu_checks.json. Exit status 0 when every step ran.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable


def log(msg: str) -> None:
    print(f"[gpu_checks {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Steps:
    def __init__(self, out: Path):
        self.out = out
        self.record: dict[str, Any] = {"steps": {}}

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        log(f"step {name}")
        t0 = time.perf_counter()
        try:
            result = fn()
            self.record["steps"][name] = {"status": "ok", "seconds": round(time.perf_counter() - t0, 1),
                                          "result": result}
            return result
        except BaseException as e:  # recorded with its traceback; later steps still run
            self.record["steps"][name] = {"status": "error", "seconds": round(time.perf_counter() - t0, 1),
                                          "error": f"{type(e).__name__}: {e}",
                                          "traceback": traceback.format_exc(limit=8)}
            log(f"step {name} FAILED: {type(e).__name__}: {e}")
            return None
        finally:
            self.save()

    def save(self) -> None:
        (self.out / "gpu_checks.json").write_text(json.dumps(self.record, indent=2, default=str) + "\n")

    @property
    def ok(self) -> bool:
        return all(s["status"] == "ok" for s in self.record["steps"].values())


def environment() -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    env: dict[str, Any] = {"python": sys.version.split()[0], "torch": torch.__version__,
                           "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
                           "onnxruntime": ort.__version__, "ort_providers": ort.get_available_providers()}
    if torch.cuda.is_available():
        from fopt.runtime.base import gpu_record

        env.update(gpu_record(0))
    try:
        import tensorrt as trt

        env["tensorrt"] = trt.__version__
    except Exception as e:
        env["tensorrt"] = f"unavailable: {type(e).__name__}: {e}"
    return env


def prepare_model(args, work: Path) -> dict[str, Any]:
    from fopt.data.build import build_dataset
    from fopt.data.synth import synthesize
    from fopt.export.run import export_checkpoint
    from fopt.train.config import TrainConfig
    from fopt.train.engine import fit

    raw, table = work / "data" / "raw", work / "data" / "table"
    synthesize(raw, classes=args.classes, per_class=args.per_class, size=max(args.img_size, 64), seed=0)
    if not (table / "dataset.csv").exists():
        build_dataset(raw, table)
    run = work / args.model
    cfg = TrainConfig(data=str(table), model=args.model, out=str(run), epochs=args.epochs,
                      batch_size=32, img_size=args.img_size, device=args.device, workers=2, seed=0,
                      top_losses=0, experiments=str(work / "experiments.csv"))
    res = fit(cfg.validate())
    ckpt = run / "best.pt"
    onnx_path = Path(export_checkpoint(ckpt, ("onnx",), run, force=True)[0].path)
    return {"dataset": str(table), "checkpoint": str(ckpt), "onnx": str(onnx_path),
            "train_val_accuracy": res.val.get("accuracy"), "epochs": args.epochs, "img_size": args.img_size}


def optimize(onnx_path: str, args) -> dict[str, Any]:
    from fopt.optimize.run import OptimizeOptions, optimize_onnx

    methods = ("int8-static", "fp16") + (("tensorrt",) if args.device == "cuda" else ())
    result = optimize_onnx(onnx_path, OptimizeOptions(
        methods=methods, int8_target="both", force=True,
        min_batch=1, opt_batch=1, max_batch=max(8, args.max_batch), threads=args.threads), log=log)
    return {"rows": result["rows"], "notes": result["notes"],
            "engines": [a["path"] for a in result["artifacts"] if a["method"] == "tensorrt"],
            "onnx_artifacts": [a["path"] for a in result["artifacts"] if a["method"] != "tensorrt"]}


def latency(paths: list[str], device: str, args) -> list[dict[str, Any]]:
    from fopt.bench.run import bench_artifacts

    res = bench_artifacts(paths, device=device, batch_sizes=[1, 8], threads=args.threads,
                          min_time_s=args.min_time, processes=1, estimate=False, on_progress=log)
    keep = ("artifact", "backend", "precision", "batch_size", "latency_ms", "throughput_ips", "h2d_ms",
            "timer", "status", "error", "device", "threads")
    return [{k: r.to_dict().get(k) for k in keep} for r in res.results]


def compat_guard(engine: str, work: Path) -> dict[str, Any]:
    from fopt.artifacts import read_card, write_card
    from fopt.errors import InputError
    from fopt.runtime import open_runner

    fake = work / "other_gpu.engine"
    shutil.copy(engine, fake)
    card = read_card(engine)
    card["tensorrt"] = {**card["tensorrt"], "gpu_name": "Some Other GPU", "compute_capability": "7.5"}
    write_card(fake, card)
    try:
        open_runner(fake, device="cuda").load()
    except InputError as e:
        return {"refused": True, "message": str(e)}
    raise AssertionError("an engine whose card names another GPU was loaded")


def parity(onnx_path: str, engines: list[str], dataset: str, n: int = 8) -> dict[str, Any]:
    import numpy as np

    from fopt.artifacts import InputSpec, read_card
    from fopt.data.calibration import calibration_batch
    from fopt.runtime import open_runner

    spec = InputSpec.from_dict(read_card(onnx_path)["input_spec"])
    x = calibration_batch(dataset, n, spec.size, spec.mean, spec.std, split="val", seed=1)
    with open_runner(onnx_path, device="cpu") as r:
        ref = r.infer(x)
    out = {}
    for e in engines:
        with open_runner(e, device="cuda") as r:
            got = r.infer(x)
        cos = float(np.min((ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))))
        out[Path(e).name] = {"max_abs_diff": float(np.abs(ref - got).max()), "min_cosine": round(cos, 5),
                             "argmax_agreement": float((ref.argmax(1) == got.argmax(1)).mean())}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("artifacts/gpu"))
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--per-class", type=int, default=80)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=4, help="CPU threads for ONNX Runtime rows")
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--min-time", type=float, default=1.0)
    ap.add_argument("--dry-run-cpu", action="store_true",
                    help="check the script without a GPU: train on CPU, no engines")
    args = ap.parse_args(argv)
    args.device = "cpu" if args.dry_run_cpu else "cuda"
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "work"
    work.mkdir(exist_ok=True)
    steps = Steps(args.out)
    steps.record["settings"] = {k: str(v) for k, v in vars(args).items()}
    steps.run("environment", environment)
    prep = steps.run("prepare_model", lambda: prepare_model(args, work))
    if prep:
        opt = steps.run("optimize", lambda: optimize(prep["onnx"], args))
        if opt:
            if opt["engines"]:
                steps.run("latency_tensorrt_cuda", lambda: latency(opt["engines"], "cuda", args))
            steps.run("latency_onnxruntime_cpu", lambda: latency([prep["onnx"], *opt["onnx_artifacts"]], "cpu", args))
            if opt["engines"]:
                steps.run("compat_guard", lambda: compat_guard(opt["engines"][0], work))
                steps.run("parity", lambda: parity(prep["onnx"], opt["engines"], prep["dataset"]))
    steps.save()
    log(f"wrote {args.out / 'gpu_checks.json'}; all steps ok: {steps.ok}")
    return 0 if steps.ok else 1


if __name__ == "__main__":
    sys.exit(main())
