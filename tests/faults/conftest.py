"""Session fixtures of the fault suite: tiny inputs made once through the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fault_helpers import fopt_env, run_fopt

# ----------------------------------------------------------------------------- shared inputs


@pytest.fixture(scope="session")
def faults_base(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("faults_base")


@pytest.fixture(scope="session")
def fault_raw(faults_base) -> Path:
    """A synthetic DeepFashion-layout raw set (4 classes x 30 images, 32 px), made by the CLI."""
    raw = faults_base / "raw"
    res = run_fopt(["data", "synth", raw, "--classes", "4", "--per-class", "30", "--size", "32"], faults_base)
    assert res.returncode == 0, res.stderr
    return raw


@pytest.fixture(scope="session")
def fault_table(fault_raw, faults_base) -> Path:
    table = faults_base / "table"
    res = run_fopt(["data", "build", fault_raw, table], faults_base)
    assert res.returncode == 0, res.stderr
    return table


@pytest.fixture(scope="session")
def fault_checkpoint(fault_table, faults_base) -> Path:
    """A trained (1 epoch) tiny checkpoint at 32 px on `fault_table`."""
    run = faults_base / "train"
    res = run_fopt(["train", "--data", fault_table, "--model", "tiny", "--img-size", "32", "--epochs", "1",
                    "--workers", "0", "--precise-bn", "0", "--top-losses", "0", "--device", "cpu",
                    "--experiments", faults_base / "experiments.csv", "--out", run], faults_base)
    assert res.returncode == 0, res.stderr
    return run / "best.pt"


@pytest.fixture(scope="session")
def fault_onnx(fault_checkpoint, faults_base) -> Path:
    out = faults_base / "export"
    res = run_fopt(["export", fault_checkpoint, "--onnx", "--out", out], faults_base)
    assert res.returncode == 0, res.stderr
    return out / "best.onnx"


@pytest.fixture(scope="session")
def quick_cache(faults_base) -> Path:
    """A reduced machine calibration (1 thread) in a private cache, so the pipeline skips its minute."""
    res = subprocess.run([sys.executable, "-c", "from fopt.bench.costmodel.calibrate import calibrate; "
                          "calibrate('cpu', 1, quick=True)"], cwd=faults_base, env=fopt_env(faults_base),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return faults_base / "cache"
