"""Fixtures for the training tests: one short training run shared by the file/eval tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Small and fast: the tiny CNN at 32 px, no worker processes, a few epochs.
FAST = ["--model", "tiny", "--img-size", "32", "--batch-size", "8", "--workers", "0"]


def fopt_env() -> dict[str, str]:
    """Environment for `python -m fopt` subprocesses: one thread, so results are reproducible."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    return env


def run_fopt(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "fopt", *map(str, args)], cwd=REPO, env=fopt_env(),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"fopt {' '.join(map(str, args))} exited {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def fopt_cmd():
    """Run `python -m fopt ARGS` in a reproducible subprocess; see run_fopt."""
    return run_fopt


@pytest.fixture(scope="session")
def trained_run(synth_dataset, tmp_path_factory):
    """A finished 3-epoch `tiny` run on the synthetic dataset (in-process fit)."""
    from fopt.train.config import TrainConfig
    from fopt.train.engine import fit

    root = tmp_path_factory.mktemp("trained")
    cfg = TrainConfig(data=str(synth_dataset), model="tiny", out=str(root / "run"), epochs=3,
                      batch_size=8, img_size=32, workers=0, top_losses=10,
                      experiments=str(root / "experiments.csv"))
    return cfg, fit(cfg)
