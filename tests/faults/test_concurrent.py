"""Two fopt processes writing one folder: the second is refused in one line, the first completes.

The overlap is made deterministic with job control instead of timing luck: the first process is
started, and as soon as it has put anything into the work folder (its lock, scratch folder or
first output) it is stopped with SIGSTOP. The second process then runs to its end while the first
is provably alive and mid-write; only then is the first continued (SIGCONT) and awaited.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from fault_helpers import fopt_cmd, fopt_env, one_error_line, run_fopt, stray_temps, validate_tree


def _entries(root: Path) -> set[str]:
    """What is in `root`, leaving out the subprocesses' own system temp and cache folders."""
    if not root.exists():
        return set()
    rels = (p.relative_to(root) for p in root.rglob("*"))
    return {str(r) for r in rels if r.parts[0] not in ("systmp", "cache")}


def _first_stopped_while_second_runs(args, base: Path, watch: Path, timeout: float = 120):
    env = fopt_env(base)
    before = _entries(watch)
    p1 = subprocess.Popen(fopt_cmd(*args), cwd=base, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.monotonic()
        while _entries(watch) == before:
            assert p1.poll() is None, f"first run ended before writing anything:\n{p1.stderr.read()}"
            assert time.monotonic() - t0 < timeout, "first run wrote nothing in time"
            time.sleep(0.01)
        os.kill(p1.pid, signal.SIGSTOP)
        assert p1.poll() is None, "first run finished before it could be paused"
        second = subprocess.run(fopt_cmd(*args), cwd=base, env=fopt_env(base), capture_output=True,
                                text=True, timeout=600)
    finally:
        os.kill(p1.pid, signal.SIGCONT)
    out1, err1 = p1.communicate(timeout=600)
    return p1.returncode, err1, second


def _assert_refused(second: subprocess.CompletedProcess) -> None:
    assert second.returncode == 2, (f"the second writer was not refused (exit {second.returncode}):\n"
                                    f"{second.stderr[-2000:]}")
    line = one_error_line(second.stderr)
    assert "another" in line or "busy" in line.lower() or "lock" in line.lower(), line


def test_two_data_synth_on_one_folder(tmp_path):
    out = tmp_path / "raw"
    args = ["data", "synth", out, "--classes", "4", "--per-class", "40", "--size", "64"]
    rc1, err1, second = _first_stopped_while_second_runs(args, tmp_path, tmp_path)
    _assert_refused(second)
    assert rc1 == 0, err1[-2000:]
    validate_tree(out)
    assert (out / "synth.json").is_file()
    assert stray_temps(tmp_path) == []


@pytest.mark.slow
def test_two_trains_on_one_run_folder(tmp_path, fault_table):
    run = tmp_path / "run"
    args = ["train", "--data", fault_table, "--model", "tiny", "--img-size", "32", "--epochs", "1",
            "--workers", "0", "--precise-bn", "0", "--top-losses", "0", "--device", "cpu",
            "--experiments", tmp_path / "experiments.csv", "--out", run]
    rc1, err1, second = _first_stopped_while_second_runs(args, tmp_path, tmp_path)
    _assert_refused(second)
    assert rc1 == 0, err1[-2000:]
    validate_tree(run)
    assert (run / "best.pt").is_file() and (run / "last.pt").is_file()
    assert stray_temps(tmp_path) == []


@pytest.mark.slow
def test_two_pipelines_on_one_folder(tmp_path, fault_table, quick_cache):
    import shutil

    shutil.copytree(quick_cache, tmp_path / "cache")
    out = tmp_path / "pl"
    args = ["pipeline", "--model", "tiny", "--data", fault_table, "--out", out, "--epochs", "1",
            "--img-size", "32", "--workers", "0", "--method", "int8-static", "--calib-size", "32",
            "--batch-sizes", "1", "--min-time", "0.05", "--threads", "1"]
    rc1, err1, second = _first_stopped_while_second_runs(args, tmp_path, tmp_path)
    _assert_refused(second)
    assert rc1 == 0, err1[-2000:]
    validate_tree(out)
    assert (out / "report.json").is_file()
    assert stray_temps(tmp_path) == []
