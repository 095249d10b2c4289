"""torchrun + DDP on CPU (gloo, 2 processes): one set of files, metrics over the full validation
split, and the same training step as one process with the same global batch.

Tolerance: DDP averages the two processes' mean gradients, (g0 + g1) / 2, where one process
computes the mean over all 16 images in one batched backward pass. The sums run in a different
order, so each step differs by float32 rounding (~1e-7 relative); Adam divides by sqrt(v), which
can magnify that for weights whose gradient is near zero. After 2 epochs (12 Adam steps, lr 1e-3)
the observed max |difference| is ~1e-5; we allow 1e-4, a tenth of one Adam step (lr). Real
mistakes exceed it by far: the same run with a global batch of 8 instead of 16 differs by ~2e-2,
another seed by ~0.4. The model has no BatchNorm: DDP normalises each process's half
batch separately (SyncBatchNorm is CUDA-only), which is a real difference, not rounding.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
ENTRY = HERE / "_ddp_entry.py"
TOLERANCE = 1e-4
COMMON = ["--img-size", "32", "--workers", "0", "--device", "cpu", "--no-augment", "--seed", "5",
          "--top-losses", "6"]

pytestmark = pytest.mark.skipif(not TORCHRUN.exists() or not torch.distributed.is_available(),
                                reason="torchrun / torch.distributed not available")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra})
    return env


def _torchrun(*args, entry: list[str] | None = None, env=None, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2",
           *(entry or [str(ENTRY)]), "train", *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, env=env or _env(), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def ddp_dataset(tmp_path_factory):
    """6 classes x 24 synthetic images (~100 train images: 6 full global batches of 16).

    DistributedSampler pads an odd split with a repeated index at the end of its permutation;
    that tail is in the partial last batch, which training drops, in DDP and in one process."""
    from fopt.data.build import build_dataset
    from fopt.data.datasets import DatasetTable
    from fopt.data.synth import synthesize

    root = tmp_path_factory.mktemp("ddp_data")
    synthesize(root / "raw", classes=6, per_class=24, size=32, seed=7)
    build_dataset(root / "raw", root / "ds")
    assert len(DatasetTable.load(root / "ds").split("train")) % 16 != 0  # the padding case
    return root / "ds"


def _single_process_reference(data: Path, out: Path, experiments: Path, epochs: int):
    from fopt.train.config import TrainConfig
    from fopt.train.engine import fit

    sys.path.insert(0, str(HERE))
    try:
        from _ddp_entry import register_tiny_nobn
    finally:
        sys.path.remove(str(HERE))
    register_tiny_nobn()
    return fit(TrainConfig(data=str(data), model="tiny_nobn", out=str(out), epochs=epochs,
                           batch_size=16, img_size=32, workers=0, device="cpu", augment=False,
                           seed=5, top_losses=6, experiments=str(experiments)))


def _max_weight_diff(a: Path, b: Path) -> float:
    from fopt.checkpoint import read_checkpoint

    sa, sb = read_checkpoint(a)["state_dict"], read_checkpoint(b)["state_dict"]
    assert sa.keys() == sb.keys()
    return max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa)


def test_ddp_two_processes_match_one_process(ddp_dataset, tmp_path):
    from fopt.data.datasets import DatasetTable

    run, ref = tmp_path / "ddp", tmp_path / "single"
    experiments = tmp_path / "experiments.csv"
    proc = _torchrun("--data", ddp_dataset, "--model", "tiny_nobn", "--out", run, "--epochs", "2",
                     "--batch-size", "8", "--experiments", experiments, *COMMON)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "batch 8 per process x 2 process(es) = global batch 16" in proc.stderr
    assert proc.stderr.count("epoch 2/2 ") == 1  # only rank 0 logs

    # One set of files, written once (by rank 0).
    files = sorted(p.name for p in run.iterdir())
    assert files == sorted(["best.pt", "best.pt.json", "last.pt", "last.pt.json", "history.csv",
                            "curves.png", "report.json", "classification_report.txt",
                            "confusion_matrix.png", "top_losses.csv", "config.json"])
    with open(experiments) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["world_size"] == "2" and rows[0]["global_batch_size"] == "16"
    report = json.loads((run / "report.json").read_text())
    table = DatasetTable.load(ddp_dataset)
    # Metrics over the whole validation split (gathered), not rank 0's half.
    assert report["val"]["n"] == len(table.split("val"))
    assert sum(r["support"] for r in report["val"]["per_class"].values()) == len(table.split("val"))
    with open(run / "top_losses.csv") as f:
        top = list(csv.DictReader(f))
    assert len(top) == 6

    _single_process_reference(ddp_dataset, ref, tmp_path / "exp_single.csv", epochs=2)
    diff = _max_weight_diff(run / "last.pt", ref / "last.pt")
    print(f"max |DDP - single| weight difference after 2 epochs: {diff:.3g}")
    assert diff < TOLERANCE, f"DDP vs single-process weights differ by {diff:.3g}"
    single = json.loads((ref / "report.json").read_text())
    assert report["val"]["n"] == single["val"]["n"]


def test_torchrun_module_entry_with_batchnorm(ddp_dataset, tmp_path):
    """The documented command itself: `torchrun ... -m fopt train` on the BatchNorm `tiny`."""
    run = tmp_path / "run"
    proc = _torchrun("--data", ddp_dataset, "--model", "tiny", "--out", run, "--epochs", "1",
                     "--batch-size", "8", "--experiments", tmp_path / "e.csv", *COMMON,
                     entry=["-m", "fopt"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    from fopt.checkpoint import load_checkpoint

    ckpt = load_checkpoint(run / "best.pt")  # SyncBN/DDP wrappers never leak into the file
    assert ckpt.card["config"]["world_size"] == 2


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.slow
def test_ddp_resume_after_kill(ddp_dataset, tmp_path):
    """Kill the whole torchrun job in epoch 2, resume it under torchrun, and land on the same
    weights as one uninterrupted single process (within TOLERANCE)."""
    run = tmp_path / "ddp"
    args = ["--data", ddp_dataset, "--model", "tiny_nobn", "--epochs", "3", "--batch-size", "8",
            "--experiments", tmp_path / "e.csv", *COMMON]
    cmd = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", str(ENTRY), "train",
           *map(str, args), "--out", str(run)]
    job = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (run / "last.pt").exists():
        assert job.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    time.sleep(0.02)
    # torchrun and both workers at once, like a lost machine (torchrun starts its workers in
    # their own sessions, so they are found by parent pid, not by process group).
    for pid in [*_children(job.pid), job.pid]:
        os.kill(pid, signal.SIGKILL)
    job.wait()
    from fopt.checkpoint import read_checkpoint

    assert read_checkpoint(run / "last.pt")["train_state"]["epoch"] == 1
    proc = _torchrun("--resume", run, "--experiments", tmp_path / "e.csv")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "after epoch 1" in proc.stderr
    _single_process_reference(ddp_dataset, tmp_path / "single", tmp_path / "e1.csv", epochs=3)
    assert _max_weight_diff(run / "last.pt", tmp_path / "single" / "last.pt") < TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fail", "hang"])
def test_a_failing_rank_ends_the_job(mode, ddp_dataset, tmp_path):
    """Rank 1 raises (or hangs) while rank 0 waits for it: the job ends with a clear message."""
    var = "FOPT_TEST_FAIL_RANK" if mode == "fail" else "FOPT_TEST_HANG_RANK"
    t0 = time.monotonic()
    proc = _torchrun("--data", ddp_dataset, "--model", "tiny_nobn", "--out", tmp_path / "run",
                     "--epochs", "2", "--batch-size", "8", "--experiments", tmp_path / "e.csv",
                     "--dist-timeout", "5", *COMMON, env=_env(**{var: "1"}), timeout=120)
    assert proc.returncode != 0
    assert time.monotonic() - t0 < 90
    if mode == "fail":
        assert "rank 1/2 failed: RuntimeError: injected test failure" in proc.stderr
    else:
        assert "rank 0/2 failed" in proc.stderr and "--dist-timeout 5 s" in proc.stderr
    assert not (tmp_path / "run" / "report.json").exists()
