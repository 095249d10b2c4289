"""--resume after SIGKILL: the finished run equals one that was never interrupted (CPU, same seed)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from fopt.cli import cli


@pytest.fixture(scope="module")
def resume_dataset(tmp_path_factory):
    """More images than the shared fixture, so an epoch lasts long enough to be killed inside."""
    from fopt.data.build import build_dataset
    from fopt.data.synth import synthesize

    root = tmp_path_factory.mktemp("resume_data")
    synthesize(root / "raw", classes=6, per_class=30, size=32, seed=3)
    build_dataset(root / "raw", root / "ds")
    return root / "ds"


def _history(run):
    with open(run / "history.csv") as f:
        return [{k: v for k, v in row.items() if k not in ("seconds", "images_per_s")}
                for row in csv.DictReader(f)]


REPO = Path(__file__).resolve().parents[2]
FAST = ["--model", "tiny", "--img-size", "32", "--batch-size", "8", "--workers", "0"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # reproducible threads


def _kill_mid_epoch_2(proc: subprocess.Popen, run: Path, errors: list[str]) -> None:
    """SIGKILL `proc` early in epoch 2, once epoch 1's last.pt exists."""
    deadline = time.monotonic() + 90
    while not (run / "last.pt").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            errors.append(f"no last.pt (exit code {proc.poll()})")
            proc.kill()
            return
        time.sleep(0.005)
    # last.pt is the last thing an epoch writes: 20 ms later the run is in epoch 2's first
    # steps (an epoch of 18 steps takes >= 0.1 s even on an idle machine).
    time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_resume_after_sigkill_equals_uninterrupted_run(resume_dataset, tmp_path, fopt_cmd):
    from fopt.checkpoint import read_checkpoint
    from fopt.train.config import TrainConfig
    from fopt.train.engine import fit

    killed, ref = tmp_path / "killed", tmp_path / "reference"
    experiments = tmp_path / "experiments.csv"
    # Augmentation and dropout stay on: the random streams must resume exactly too.
    args = ["train", "--data", resume_dataset, *FAST, "--epochs", "3", "--top-losses", "5",
            "--experiments", experiments, "--out", killed]
    victim = subprocess.Popen([sys.executable, "-m", "fopt", *map(str, args)], cwd=REPO, env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    errors: list[str] = []
    killer = threading.Thread(target=_kill_mid_epoch_2, args=(victim, killed, errors))
    killer.start()
    # The uninterrupted reference runs here meanwhile (same seed and options, one thread).
    fit(TrainConfig(data=str(resume_dataset), model="tiny", img_size=32, batch_size=8, workers=0,
                    epochs=3, top_losses=5, experiments=str(experiments), out=str(ref)))
    killer.join()
    assert not errors, errors
    assert victim.returncode == -signal.SIGKILL
    assert read_checkpoint(killed / "last.pt")["train_state"]["epoch"] == 1, \
        "the kill came after epoch 2 had finished; the test wants it mid-epoch"
    assert not (killed / "report.json").exists()

    out = fopt_cmd("train", "--resume", killed, "--experiments", experiments)
    assert "after epoch 1" in out.stderr

    a, b = read_checkpoint(ref / "last.pt"), read_checkpoint(killed / "last.pt")
    assert a["train_state"]["epoch"] == b["train_state"]["epoch"] == 3
    for key, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][key]), key
    assert _history(ref) == _history(killed)
    ra, rb = (json.loads((r / "report.json").read_text()) for r in (ref, killed))
    assert ra["best_epoch"] == rb["best_epoch"]
    assert ra["val"]["accuracy"] == rb["val"]["accuracy"] and ra["val"]["macro_f1"] == rb["val"]["macro_f1"]
    assert ra["test"] == rb["test"]
    assert not list(killed.glob(".*.tmp")), "stale temporary files left after resume"
    with open(experiments) as f:
        assert len(list(csv.DictReader(f))) == 2  # the killed run adds its row only when it finishes


def test_resume_rejects_changed_training_options(trained_run):
    cfg, result = trained_run
    res = CliRunner().invoke(cli, ["train", "--resume", str(result.run_dir), "--lr", "0.5"])
    assert res.exit_code == 2 and "lr=0.001" in res.output
    res = CliRunner().invoke(cli, ["train", "--resume", str(result.run_dir), "--out", "elsewhere"])
    assert res.exit_code == 2 and "drop --out" in res.output
