"""Training images/s for 1 vs N CPU processes (torchrun + DDP, gloo) and the scaling efficiency.

Same model, data, seed and *global* batch in every configuration. Configurations:
  1 process x 1 thread, 1 process x N threads (what one process gets from the whole machine),
  N processes x 1 thread (torchrun). Efficiency = images/s(N processes) / (N x images/s(1 x 1)).
Images/s is the median over the epochs after the first (warm-up) from each run's history.csv.
On a machine shared with other work the numbers are noisy; the spread across epochs is printed.

    .venv/bin/python benchmarks/ddp_scaling.py --model mobilenet_v3_small --img-size 96
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(cmd: list[str], threads: int) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")


def epoch_rates(run_dir: Path) -> list[float]:
    with open(run_dir / "history.csv") as f:
        return [float(r["images_per_s"]) for r in csv.DictReader(f)][1:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenet_v3_small")
    ap.add_argument("--img-size", type=int, default=96)
    ap.add_argument("--global-batch", type=int, default=32)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=4, help="the first one is warm-up")
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.global_batch % args.procs:
        sys.exit("--global-batch must be divisible by --procs")

    from fopt.data.build import build_dataset
    from fopt.data.synth import synthesize

    tmp = Path(tempfile.mkdtemp(prefix="fopt_bench_ddp_"))
    synthesize(tmp / "raw", classes=6, per_class=args.per_class, size=args.img_size, seed=0)
    build_dataset(tmp / "raw", tmp / "ds")
    py = sys.executable
    torchrun = str(Path(py).with_name("torchrun"))
    common = ["train", "--data", str(tmp / "ds"), "--model", args.model, "--img-size",
              str(args.img_size), "--epochs", str(args.epochs), "--workers", "0", "--device", "cpu",
              "--top-losses", "0", "--experiments", str(tmp / "experiments.csv")]
    configs = [
        ("1 process x 1 thread", 1, [py, "-m", "fopt", *common, "--batch-size", str(args.global_batch)]),
        (f"1 process x {args.procs} threads", args.procs,
         [py, "-m", "fopt", *common, "--batch-size", str(args.global_batch)]),
        (f"{args.procs} processes x 1 thread", 1,
         [torchrun, "--standalone", "--nproc-per-node", str(args.procs), "-m", "fopt", *common,
          "--batch-size", str(args.global_batch // args.procs)]),
    ]
    rows = []
    for i, (name, threads, cmd) in enumerate(configs):
        out = tmp / f"run{i}"
        run([*cmd, "--out", str(out)], threads)
        rates = epoch_rates(out)
        rows.append({"config": name, "images_per_s": round(statistics.median(rates), 2),
                     "epoch_rates": [round(r, 2) for r in rates]})
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["images_per_s"]
    result = {"benchmark": "ddp_scaling", "model": args.model, "img_size": args.img_size,
              "global_batch": args.global_batch, "cpus": os.cpu_count(), "results": rows,
              "speedup_vs_1x1": round(rows[2]["images_per_s"] / base, 3),
              "scaling_efficiency": round(rows[2]["images_per_s"] / (args.procs * base), 3),
              "ddp_vs_threads": round(rows[2]["images_per_s"] / rows[1]["images_per_s"], 3)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
