"""Run every benchmark script in benchmarks/ one after the other; each writes JSON under --out.

Scripts are discovered (every ``benchmarks/*.py`` except this one and ``_*.py``), so a new
benchmark is picked up without editing this file. Each is run in its own process, never two at
once (they time things). How to point a script at its output file is read from its ``--help``:
``--json PATH`` if it has it, else ``--out PATH`` (``--out FOLDER`` for the scripts in
`OUT_IS_FOLDER`). ``--quick`` passes the script's quick
arguments: its own ``--quick`` flag when it has one, else the small settings listed in
`QUICK_ARGS`. A failing script is recorded (exit status, last lines of stderr) and the others
still run; the exit status is 1 if any failed.

    python benchmarks/run_all.py --out artifacts/bench            # what `make bench` runs
    python benchmarks/run_all.py --out /tmp/b --quick --only bench_quality,harness_overhead
    python benchmarks/run_all.py --list
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# Small settings for scripts without a --quick flag of their own (seconds instead of minutes).
QUICK_ARGS: dict[str, list[str]] = {
    "data_loader": ["--per-class", "20", "--image-sizes", "64", "--transform-sizes", "64", "--workers", "0",
                    "--repeats", "1"],
    "train_throughput": ["--models", "mobilenet_v3_small", "--img-size", "64", "--images", "64", "--repeats", "2"],
    "ddp_scaling": ["--epochs", "2", "--per-class", "20", "--img-size", "64"],
    "optimize_quality": ["--models", "mobilenet_v3_small", "--img-size", "64", "--epochs", "1", "--per-class", "20",
                         "--processes", "1", "--min-time", "0.3", "--profile-runs", "3"],
}
# Scripts whose --out is a folder (they name their JSON inside it) rather than the JSON file.
OUT_IS_FOLDER = {"optimize_quality"}
# Extra arguments some scripts need beyond their output path.
EXTRA_ARGS: dict[str, list[str]] = {
    "data_loader": ["--work", "{out}/data_loader_work"],
}


def discover() -> list[Path]:
    return sorted(p for p in HERE.glob("*.py") if p.name != Path(__file__).name and not p.name.startswith("_"))


def script_help(script: Path) -> str:
    try:
        proc = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                              cwd=REPO, timeout=120)
    except subprocess.TimeoutExpired:
        return ""
    return proc.stdout + proc.stderr


def command_for(script: Path, out_dir: Path, quick: bool) -> list[str]:
    name = script.stem
    help_text = script_help(script)
    cmd = [sys.executable, str(script)]
    out_file = out_dir / f"{name}.json"
    if "--json" in help_text:
        cmd += ["--json", str(out_file)]
    elif "--out" in help_text:
        cmd += ["--out", str(out_dir / name if name in OUT_IS_FOLDER else out_file)]
    cmd += [a.replace("{out}", str(out_dir)) for a in EXTRA_ARGS.get(name, [])]
    if quick:
        cmd += ["--quick"] if "--quick" in help_text else QUICK_ARGS.get(name, [])
    return cmd


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "artifacts" / "bench", help="folder for every JSON")
    ap.add_argument("--only", default="", help="comma-separated script names (without .py) to run")
    ap.add_argument("--skip", default="", help="comma-separated script names to leave out")
    ap.add_argument("--quick", action="store_true", help="small settings: a smoke run in minutes")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per script before it is stopped")
    ap.add_argument("--list", action="store_true", help="print the scripts that would run and exit")
    args = ap.parse_args(argv)

    scripts = discover()
    names = {s.stem for s in scripts}
    only = {n for n in args.only.split(",") if n}
    skip = {n for n in args.skip.split(",") if n}
    unknown = (only | skip) - names
    if unknown:
        ap.error(f"unknown benchmark(s) {', '.join(sorted(unknown))}; have {', '.join(sorted(names))}")
    chosen = [s for s in scripts if (not only or s.stem in only) and s.stem not in skip]
    if args.list:
        for s in chosen:
            print(s.stem)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    records = []
    for script in chosen:
        cmd = command_for(script, args.out, args.quick)
        print(f"== {script.stem}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=args.timeout)
            rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as e:
            rc, stdout, stderr = 124, e.stdout or "", f"timed out after {args.timeout:.0f} s"
            stdout = stdout.decode() if isinstance(stdout, bytes) else stdout
        seconds = time.perf_counter() - t0
        log = args.out / f"{script.stem}.log"
        log.write_text(f"$ {' '.join(cmd)}\n--- stdout\n{stdout}\n--- stderr\n{stderr}")
        tail = [ln for ln in (stderr or "").strip().splitlines() if ln.strip()][-5:]
        status = "ok" if rc == 0 else "failed"
        print(f"   {status} in {seconds:.0f} s (log: {log})" + ("" if rc == 0 else "\n   " + "\n   ".join(tail)),
              flush=True)
        records.append({"script": script.stem, "command": cmd, "status": status, "returncode": rc,
                        "seconds": round(seconds, 1), "log": str(log),
                        "json": str(args.out / f"{script.stem}.json"), "stderr_tail": tail})
    summary = {"created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "quick": args.quick,
               "out": str(args.out), "scripts": records}
    (args.out / "run_all.json").write_text(json.dumps(summary, indent=2) + "\n")
    failed = [r["script"] for r in records if r["status"] != "ok"]
    print(f"{len(records) - len(failed)}/{len(records)} benchmarks ok; summary in {args.out / 'run_all.json'}"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
