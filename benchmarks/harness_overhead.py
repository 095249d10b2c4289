"""Does `fopt bench` add anything? Its ONNX p50 vs a bare `InferenceSession.run` loop (within 5%).

For each model (random weights, 224 px, exported to ONNX once under ``<out>_work/``), rounds
alternate between the harness (`bench_artifacts`, one row, batch 1) and a bare loop: the same
session options (intra-op threads, one inter-op thread), the same input array, a warm-up, then
``session.run`` timed with ``time.perf_counter`` for the same time budget; its p50 is the plain
median of the samples. The check passes when the median over rounds of harness p50 / bare p50 is
within 1 +- 0.05. Alternating rounds let drift on a shared machine hit both sides.

    python benchmarks/harness_overhead.py --out artifacts/bench/harness_overhead.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

TOLERANCE = 0.05


def export(model: str, size: int, work: Path) -> Path:
    import onnx
    import torch

    from fopt.artifacts import InputSpec, make_card, write_card
    from fopt.export.onnx import model_to_onnx
    from fopt.models import build_model

    path = work / f"{model}_{size}.onnx"
    if path.exists() and path.with_name(path.name + ".json").exists():
        return path
    torch.manual_seed(0)
    net = build_model(model, 22).eval()
    onnx.save(model_to_onnx(net, size), str(path))
    write_card(path, make_card(kind="onnx", format="onnx", precision="fp32", input_spec=InputSpec(size=size),
                               class_names=[f"c{i}" for i in range(22)], model={"name": model}, opset=17))
    return path


def bare_p50_ms(path: Path, x, threads: int, budget_s: float, warmup_s: float) -> tuple[float, int]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}
    out = [sess.get_outputs()[0].name]
    t_end = time.perf_counter() + warmup_s
    n = 0
    while n < 3 or time.perf_counter() < t_end:
        sess.run(out, feed)
        n += 1
    samples = []
    t_end = time.perf_counter() + budget_s
    while len(samples) < 5 or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        sess.run(out, feed)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e3, len(samples)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("artifacts/bench/harness_overhead.json"), help="JSON file")
    ap.add_argument("--models", nargs="+", default=["mobilenet_v3_small", "resnet18"])
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds of timing per side and round")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="one model, 3 short rounds")
    args = ap.parse_args(argv)

    from fopt.bench.measure.machine import default_threads, machine_record
    from fopt.artifacts import Feed
    from fopt.bench.run import bench_artifacts
    from fopt.runtime.timing import StopRule

    if args.quick:
        args.models, args.rounds, args.min_time = args.models[:1], 3, 0.3
    threads = args.threads or default_threads()
    work = args.out.with_name(args.out.stem + "_work")
    work.mkdir(parents=True, exist_ok=True)
    # The harness stops early when the median is stable; give the bare loop the same budget and
    # let the harness use all of it too, so both see the same amount of machine time.
    rule = StopRule(min_time_s=args.min_time, warmup_iters=3, warmup_s=0.2, rel_tol=0.0)
    results = []
    for model in args.models:
        path = export(model, args.img_size, work)
        x = Feed((None, 3, args.img_size, args.img_size)).random(1)
        rounds = []
        for r in range(args.rounds):
            order = ("harness", "bare") if r % 2 == 0 else ("bare", "harness")
            rec = {}
            for side in order:
                if side == "harness":
                    row = bench_artifacts([path], batch_sizes=[1], threads=threads, estimate=False, rule=rule).results[0]
                    if row.status != "ok":
                        raise SystemExit(f"harness failed on {path}: {row.error}")
                    rec["harness_p50_ms"], rec["harness_n"] = row.stats.p50, row.stats.n + row.stats.n_clipped
                else:
                    rec["bare_p50_ms"], rec["bare_n"] = bare_p50_ms(path, x, threads, args.min_time, 0.2)
            rec["ratio"] = rec["harness_p50_ms"] / rec["bare_p50_ms"]
            rounds.append(rec)
            print(f"{model} round {r + 1}: harness {rec['harness_p50_ms']:.3f} ms, bare {rec['bare_p50_ms']:.3f} ms, "
                  f"ratio {rec['ratio']:.3f}", file=sys.stderr, flush=True)
        ratio = statistics.median(r["ratio"] for r in rounds)
        results.append({"model": model, "img_size": args.img_size, "batch_size": 1, "threads": threads,
                        "harness_p50_ms": statistics.median(r["harness_p50_ms"] for r in rounds),
                        "bare_p50_ms": statistics.median(r["bare_p50_ms"] for r in rounds),
                        "ratio_median": ratio, "ratio_min": min(r["ratio"] for r in rounds),
                        "ratio_max": max(r["ratio"] for r in rounds),
                        "within_5pct": abs(ratio - 1) <= TOLERANCE, "rounds": rounds})
    ok = all(r["within_5pct"] for r in results)
    import os

    doc = {"benchmark": "harness_overhead", "pass": ok, "tolerance": TOLERANCE, "results": results,
           "load_average_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
           "machine": machine_record()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    for r in results:
        print(f"{r['model']}: harness p50 {r['harness_p50_ms']:.3f} ms vs bare {r['bare_p50_ms']:.3f} ms "
              f"-> ratio {r['ratio_median']:.3f} (rounds {r['ratio_min']:.3f}..{r['ratio_max']:.3f}) "
              f"{'within' if r['within_5pct'] else 'OUTSIDE'} 5%")
    print(f"{'PASS' if ok else 'FAIL'}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
