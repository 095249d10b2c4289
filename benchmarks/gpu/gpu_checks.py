"""The GPU check (issue 18): one run that makes a GPU machine's first contact count.

Steps (each recorded with its status and time; a failing step does not stop the others):

1. environment: GPU, compute capability, torch/CUDA/TensorRT versions, the ONNX Runtime flavour;
2. train: a small model on a synthetic dataset, 1 epoch on CUDA with AMP;
3. export: FP32 ONNX, parity-checked against the checkpoint on CUDA (TF32 off on both sides);
4. optimize: INT8 (both QDQ flavours), FP16 and the FP32/FP16/INT8 TensorRT engines, each
   artifact evaluated on the validation split (its accuracy);
5. calibrate: `fopt bench --calibrate --device cuda` (GEMM rates, bandwidth, launch gap);
6. latency: engines and ONNX files through `fopt bench --device cuda` at batch 1/8/32 (p50,
   throughput) with the naive, roofline and calibrated estimates and their errors;
7. ort_providers: ONNX Runtime's CUDA and TensorRT providers on the FP32 ONNX (IO binding);
8. trtexec: fopt's latency of the FP32 engine against `trtexec --loadEngine` on the same engine;
9. compat_guard: a copy of an engine whose card names another GPU must be refused.

`--dry-run` runs every step that needs no GPU on the CPU (training without AMP, CPU parity, ONNX
methods only, CPU latency) and records the GPU-only ones as skipped, so the tests can run the
script itself. Rerunnable in the same output folder: every step replaces its outputs. Writes
OUT/gpu_checks.json and OUT/gpu_checks.md (the summary). Exit status 0 when no step failed.

    python benchmarks/gpu/gpu_checks.py --out artifacts/gpu            # on a GPU machine
    python benchmarks/gpu/gpu_checks.py --out /tmp/gpu --dry-run       # anywhere
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

BATCHES = (1, 8, 32)


def log(msg: str) -> None:
    print(f"[gpu_checks {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Steps:
    """Runs named steps, records each one's status, and rewrites the JSON after every step."""

    def __init__(self, out: Path, dry_run: bool):
        self.out, self.dry_run = out, dry_run
        self.record: dict[str, Any] = {"dry_run": dry_run, "steps": {}}

    def run(self, name: str, fn: Callable[[], Any], gpu_only: bool = False) -> Any:
        if gpu_only and self.dry_run:
            self.record["steps"][name] = {"status": "skipped", "reason": "dry run: needs a GPU"}
            self.save()
            return None
        log(f"step {name}")
        t0 = time.perf_counter()
        try:
            result = fn()
            self.record["steps"][name] = {"status": "ok", "seconds": round(time.perf_counter() - t0, 1),
                                          "result": result}
            return result
        except Exception as e:  # recorded with its traceback; later steps still run
            self.record["steps"][name] = {"status": "error", "seconds": round(time.perf_counter() - t0, 1),
                                          "error": f"{type(e).__name__}: {e}",
                                          "traceback": traceback.format_exc(limit=8)}
            log(f"step {name} FAILED: {type(e).__name__}: {e}")
            return None
        finally:
            self.save()

    def save(self) -> None:
        from fopt.artifacts import write_json_atomic

        write_json_atomic(self.out / "gpu_checks.json", self.record)

    @property
    def ok(self) -> bool:
        return all(s["status"] != "error" for s in self.record["steps"].values())


# ----------------------------------------------------------------------------- steps

def environment() -> dict[str, Any]:
    import torch

    from fopt.runtime.base import gpu_record
    from fopt.runtime.ortflavour import active_flavour

    env: dict[str, Any] = {"python": sys.version.split()[0], "torch": torch.__version__,
                           "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
                           "onnxruntime": active_flavour(), "gpu": gpu_record(0)}
    import onnxruntime as ort

    env["ort_providers"] = ort.get_available_providers()
    try:
        from fopt.runtime.tensorrt import import_tensorrt

        env["tensorrt"] = import_tensorrt().__version__
    except Exception as e:
        env["tensorrt"] = f"unavailable: {e}"
    return env


def train(args, work: Path) -> dict[str, Any]:
    from fopt.data.build import build_dataset
    from fopt.data.synth import synthesize
    from fopt.train.config import TrainConfig
    from fopt.train.engine import fit

    raw, table = work / "data" / "raw", work / "data" / "table"
    if not (table / "dataset.csv").exists():
        shutil.rmtree(work / "data", ignore_errors=True)   # a half-made dataset of a killed run
        synthesize(raw, classes=args.classes, per_class=args.per_class, size=max(args.img_size, 64), seed=0)
        build_dataset(raw, table)
    run = work / args.model
    cfg = TrainConfig(data=str(table), model=args.model, out=str(run), epochs=1, batch_size=32,
                      img_size=args.img_size, device=args.device, amp=args.device == "cuda", workers=2,
                      seed=0, top_losses=0, precise_bn=64, experiments=str(work / "experiments.csv"))
    t0 = time.perf_counter()
    res = fit(cfg.validate(), force=True)   # force: a rerun replaces the previous run
    return {"dataset": str(table), "checkpoint": str(run / "best.pt"), "device": args.device,
            "amp": cfg.amp, "epochs": 1, "seconds": round(time.perf_counter() - t0, 1),
            "val_accuracy": res.val.get("accuracy")}


def export(checkpoint: str, args, work: Path) -> dict[str, Any]:
    from fopt.export.run import export_checkpoint

    out = export_checkpoint(checkpoint, ("onnx",), work / "export", device=args.device, force=True)
    onnx = out[0]
    parity = getattr(onnx, "parity", None) or (onnx.card.get("parity") if hasattr(onnx, "card") else None)
    return {"onnx": str(onnx.path), "parity_device": args.device, "parity": parity}


def optimize(onnx_path: str, args) -> dict[str, Any]:
    from fopt.optimize.run import OptimizeOptions, optimize_onnx

    methods = ("int8-static", "fp16") + (("tensorrt",) if args.device == "cuda" else ())
    result = optimize_onnx(onnx_path, OptimizeOptions(
        methods=methods, int8_target="both", force=True, latency=False,
        min_batch=1, opt_batch=1, max_batch=max(BATCHES), threads=args.threads), log=log)
    arts = result["artifacts"]
    return {"rows": result["rows"], "notes": result["notes"],
            "engines": {a["row"].get("precision") or Path(a["path"]).stem: a["path"]
                        for a in arts if a["method"] == "tensorrt"},
            "onnx_artifacts": [a["path"] for a in arts if a["method"] != "tensorrt"]}


def calibrate_gpu() -> dict[str, Any]:
    from fopt.bench.costmodel.cache import save_calibration
    from fopt.bench.costmodel.calibrate import calibrate

    cal = calibrate("cuda", quick=True)
    save_calibration(cal)
    return cal["summary"]


def latency(paths: list[str], device: str, args) -> list[dict[str, Any]]:
    from fopt.bench.run import bench_artifacts

    res = bench_artifacts(paths, device=device, batch_sizes=list(BATCHES), threads=args.threads,
                          min_time_s=args.min_time, processes=1, estimate=True, on_progress=log)
    keep = ("artifact", "backend", "precision", "batch_size", "latency_ms", "throughput_ips", "h2d_ms",
            "timer", "status", "error", "device", "estimate_ms", "error_pct", "estimate_notes")
    return [{k: r.to_dict().get(k) for k in keep} for r in res.results]


def ort_providers(onnx_path: str, args) -> list[dict[str, Any]]:
    """The FP32 ONNX on ONNX Runtime's CUDA provider and on its TensorRT provider (engine cache on)."""
    from fopt.bench.measure.harness import make_input
    from fopt.runtime import open_runner
    from fopt.runtime.timing import StopRule, WallTimer, measure, summarize, throughput_ips

    rows = []
    for trt in (False, True):
        with open_runner(onnx_path, device="cuda", tensorrt_provider=trt) as r:
            spec = r.input_spec
            for b in BATCHES:
                prepared = r.prepare(make_input(spec.channels, spec.size, b))
                loop = measure(WallTimer(lambda: r.run_prepared(prepared), r.synchronize),
                               StopRule(min_time_s=args.min_time))
                st = summarize(loop.samples_s)
                rows.append({"backend": r.backend, "providers": r.execution.get("providers"), "batch_size": b,
                             "p50_ms": st.p50, "throughput_ips": throughput_ips(b, st.p50)})
    return rows


def trtexec_vs_fopt(engine: str, fopt_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """trtexec's median GPU compute time on the same engine at batch 1, beside fopt's p50."""
    from fopt.artifacts import read_card

    exe = shutil.which("trtexec")
    if exe is None:
        return {"status": "trtexec not on PATH: compare by hand with `trtexec --loadEngine=" + engine + "`"}
    prof = read_card(engine)["tensorrt"]["profile"]
    shape = "x".join(str(d) for d in [1, *prof["min"][1:]])
    proc = subprocess.run([exe, f"--loadEngine={engine}", f"--shapes={prof['input']}:{shape}",
                           "--noDataTransfers", "--duration=3"], capture_output=True, text=True, timeout=300)
    m = re.search(r"GPU Compute Time:.*?median = ([0-9.]+) ms", proc.stdout)
    ours = next((r["latency_ms"]["p50"] for r in fopt_rows if r["artifact"] == engine
                 and r["batch_size"] == 1 and r["status"] == "ok"), None)
    theirs = float(m.group(1)) if m else None
    return {"trtexec_median_ms": theirs, "fopt_p50_ms": ours,
            "diff_pct": (ours / theirs - 1) * 100 if ours and theirs else None,
            "trtexec_tail": proc.stdout[-800:] if not m else None}


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


# ----------------------------------------------------------------------------- summary

def _fmt(v: Any, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def summary_markdown(record: dict[str, Any]) -> str:
    steps = record["steps"]

    def res(name: str) -> Any:
        return (steps.get(name) or {}).get("result")

    def status(name: str) -> str:
        s = steps.get(name) or {"status": "not run"}
        return s["status"] + (f": {s.get('error') or s.get('reason')}" if s["status"] != "ok" else "")

    env = res("environment") or {}
    out = ["# GPU check" + (" (dry run on the CPU)" if record.get("dry_run") else ""), "",
           f"GPU: {(env.get('gpu') or {}).get('name', 'none')}; ONNX Runtime: {env.get('onnxruntime')}; "
           f"TensorRT: {env.get('tensorrt')}", "", "## Steps", ""]
    out += [f"- {name}: {status(name)}" for name in steps]
    tr = res("train") or {}
    out += ["", "## Training (1 epoch)", "",
            f"device {tr.get('device')}, AMP {tr.get('amp')}, {tr.get('seconds')} s, "
            f"validation accuracy {_fmt(tr.get('val_accuracy'))}"]
    ex = res("export") or {}
    par = ex.get("parity") or {}
    out += ["", "## Export parity", "", f"on {ex.get('parity_device')}: passed {par.get('passed')}, "
            f"max abs diff {_fmt(par.get('max_abs_diff'))}, cosine {_fmt(par.get('cosine_similarity'), 6)}"]
    opt = res("optimize") or {}
    out += ["", "## Engines and accuracy on the validation split", "", "| artifact | accuracy % |", "|---|---|"]
    out += [f"| {r.get('method') or r.get('artifact')} | {_fmt(r.get('accuracy_pct'))} |" for r in opt.get("rows", [])]
    out += ["", "## Latency: measured against estimated", "",
            "| artifact | backend | batch | p50 ms | items/s | naive ms (err %) | roofline ms (err %) | calibrated ms (err %) |",
            "|---|---|---|---|---|---|---|---|"]
    for step in ("latency_cuda", "latency_cpu"):
        for r in res(step) or []:
            if r.get("status") != "ok":
                out.append(f"| {Path(r['artifact']).name} | {r.get('backend')} | {r['batch_size']} | {r.get('error')} |||||")
                continue
            est, err = r.get("estimate_ms") or {}, r.get("error_pct") or {}
            cells = [f"{_fmt(est.get(k))} ({_fmt(err.get(k), 2)})" for k in ("naive", "roofline", "calibrated")]
            out.append(f"| {Path(r['artifact']).name} | {r['backend']} | {r['batch_size']} | "
                       f"{_fmt((r.get('latency_ms') or {}).get('p50'))} | {_fmt(r.get('throughput_ips'))} | "
                       + " | ".join(cells) + " |")
    out += ["", "## ONNX Runtime providers (FP32 ONNX, IO binding)", "", "| backend | batch | p50 ms | items/s |",
            "|---|---|---|---|"]
    out += [f"| {r['backend']} | {r['batch_size']} | {_fmt(r['p50_ms'])} | {_fmt(r['throughput_ips'])} |"
            for r in res("ort_providers") or []]
    te = res("trtexec") or {}
    out += ["", "## fopt against trtexec (FP32 engine, batch 1)", "",
            f"trtexec median {_fmt(te.get('trtexec_median_ms'))} ms, fopt p50 {_fmt(te.get('fopt_p50_ms'))} ms, "
            f"difference {_fmt(te.get('diff_pct'), 2)} %" + (f" ({te['status']})" if te.get("status") else ""), ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("artifacts/gpu"))
    ap.add_argument("--model", default=None, help="registry model (default resnet18; tiny with --dry-run)")
    ap.add_argument("--img-size", type=int, default=None, help="default 128 (32 with --dry-run)")
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--per-class", type=int, default=None, help="default 80 (12 with --dry-run)")
    ap.add_argument("--threads", type=int, default=4, help="CPU threads for CPU rows")
    ap.add_argument("--min-time", type=float, default=None, help="seconds per latency row (default 1; 0.05 dry)")
    ap.add_argument("--dry-run", action="store_true",
                    help="no GPU: run every step that does not need one, on the CPU, and skip the rest")
    args = ap.parse_args(argv)
    dry = args.dry_run
    args.device = "cpu" if dry else "cuda"
    args.model = args.model or ("tiny" if dry else "resnet18")
    args.img_size = args.img_size or (32 if dry else 128)
    args.per_class = args.per_class or (12 if dry else 80)
    args.min_time = args.min_time or (0.05 if dry else 1.0)
    if dry:
        args.threads = 1
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "work"
    work.mkdir(exist_ok=True)
    steps = Steps(args.out, dry)
    steps.record["settings"] = {k: str(v) for k, v in vars(args).items()}
    steps.run("environment", environment)
    tr = steps.run("train", lambda: train(args, work))
    ex = steps.run("export", lambda: export(tr["checkpoint"], args, work)) if tr else None
    opt = steps.run("optimize", lambda: optimize(ex["onnx"], args)) if ex else None
    steps.run("calibrate_gpu", calibrate_gpu, gpu_only=True)
    if opt:
        engines = [p for p in opt["engines"].values() if p]
        gpu_rows = steps.run("latency_cuda", lambda: latency(engines + [ex["onnx"], *opt["onnx_artifacts"]],
                                                             "cuda", args), gpu_only=True)
        if dry:
            steps.run("latency_cpu", lambda: latency([ex["onnx"], *opt["onnx_artifacts"]], "cpu", args))
        steps.run("ort_providers", lambda: ort_providers(ex["onnx"], args), gpu_only=True)
        fp32 = opt["engines"].get("fp32")
        steps.run("trtexec", lambda: trtexec_vs_fopt(fp32, gpu_rows or []), gpu_only=not fp32 or dry)
        steps.run("compat_guard", lambda: compat_guard(engines[0], work), gpu_only=not engines or dry)
    from fopt.artifacts import write_text_atomic

    write_text_atomic(args.out / "gpu_checks.md", summary_markdown(steps.record))
    steps.save()
    log(f"wrote {args.out / 'gpu_checks.json'} and gpu_checks.md; no step failed: {steps.ok}")
    return 0 if steps.ok else 1


if __name__ == "__main__":
    sys.exit(main())
