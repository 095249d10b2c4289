"""The shared options and the failure policy, without a tracker server."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from typing import ClassVar

import pytest
from click.testing import CliRunner

from fopt.cli import cli
from fopt.errors import DataError, UsageError
from fopt.track.records import MAX_PARAM_CHARS, RunRecord, bench_metrics, flatten
from fopt.track.session import Session, TrackSettings, observe


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
@pytest.mark.parametrize("how", ["option", "env"])
def test_wandb_without_wandb_is_one_clear_error(tmp_path, how):
    args = ["bench", str(tmp_path / "x.onnx")] + (["--track", "wandb"] if how == "option" else [])
    res = CliRunner().invoke(cli, args, env={"FOPT_TRACK": "wandb" if how == "env" else None})
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == ["error: --track wandb needs wandb: pip install fopt[wandb]"]


def test_track_none_imports_no_tracker_and_writes_nothing(tmp_path):
    # a command that runs and fails on its own (no artifacts): the wrapper's path with tracking off
    code = ("import sys; from fopt.cli import main; sys.argv = ['fopt', 'bench', '--batch-sizes', '1']\n"
            "try: main()\nexcept SystemExit: pass\n"
            "print('LOADED', [m for m in ('mlflow', 'tensorboard', 'wandb', 'torch.utils.tensorboard') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, check=True).stdout
    assert "LOADED []" in out, out
    assert list(tmp_path.iterdir()) == []


class _Failing:
    """A backend whose store breaks after the run is created (a full disk, a dropped server)."""
    calls: ClassVar[list[str]] = []

    def __init__(self, uri, run_dir):
        pass

    def guard(self):
        import contextlib
        return contextlib.nullcontext()

    def __getattr__(self, name):
        def call(*args):
            _Failing.calls.append(name)
            if name == "start_run":
                return "run-1"
            raise OSError(28, "No space left on device")
        return call


def test_a_failing_tracker_warns_once_then_stays_silent(tmp_path, capsys):
    _Failing.calls = []
    root = RunRecord(name="pipeline", kind="pipeline", metrics={"a": 1.0},
                     children=[RunRecord(name=f"child {i}", kind="artifact", metrics={"b": 2.0}) for i in range(3)])
    s = Session(TrackSettings("mlflow"), tmp_path, backend=_Failing)
    assert s.log(root) is None
    assert _Failing.calls == ["start_run", "log"]  # nothing after the first failure
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: mlflow tracking stopped") and "No space left" in err[0]


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow is not installed")
def test_an_unreachable_server_costs_seconds_and_one_warning(tmp_path, capsys):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    root = RunRecord(name="bench", kind="bench", children=[RunRecord(name="a", kind="artifact")])
    t0 = time.perf_counter()
    s = Session(TrackSettings("mlflow", f"http://127.0.0.1:{port}"), tmp_path)
    assert s.log(root) is None and s.failed
    # with MLflow's own defaults (7 retries, exponential backoff) this takes about two minutes
    assert time.perf_counter() - t0 < 30
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("warning: mlflow tracking stopped"), err


def test_flatten_keeps_values_a_tracker_accepts():
    flat = flatten({"a": {"b": 1, "c": None, "d": [1, 2]}, "big": "x" * 10_000, "odd key!": True})
    assert flat["a.b"] == "1" and flat["a.d"] == "[1, 2]" and "a.c" not in flat
    assert len(flat["big"]) == MAX_PARAM_CHARS and flat["big"].endswith("...(truncated)")
    assert flat["odd key_"] == "true"


def test_bench_metrics_per_batch_skip_failed_rows():
    rows = [{"status": "ok", "batch_size": 1, "latency_ms": {"p50": 2.0, "p90": 3.0}, "throughput_ips": 500.0,
             "estimate_ms": {"naive": 1.0, "calibrated": None}, "error_pct": {"naive": -50.0}},
            {"status": "error", "batch_size": 8, "error": "boom"}]
    m = bench_metrics(rows)
    assert m == {"p50_ms_b1": 2.0, "p90_ms_b1": 3.0, "throughput_ips_b1": 500.0, "estimate_ms_naive_b1": 1.0,
                 "estimate_error_pct_naive_b1": -50.0}


class _Recording:
    """A backend that keeps what it is told, in memory."""
    runs: ClassVar[dict[str, dict]] = {}

    def __init__(self, uri, run_dir):
        _Recording.runs = {}

    def guard(self):
        import contextlib
        return contextlib.nullcontext()

    def start_run(self, name, parent_id, tags):
        self.runs[name] = {"parent": parent_id, "tags": tags}
        return name

    def log(self, run_id, params, metrics, series):
        self.runs[run_id].update(params=params, metrics=metrics)

    def end_run(self, run_id, failed):
        self.runs[run_id]["failed"] = failed

    def close(self):
        pass


@pytest.mark.parametrize("error, recorded", [(DataError("bad row 3 in dataset.csv"), True),
                                             (UsageError("--epochs must be >= 1"), False)])
def test_a_failed_command_is_a_failed_run_unless_it_was_refused(tmp_path, error, recorded):
    _Recording.runs = {}
    observe(TrackSettings("mlflow"), "pipeline", {"out": str(tmp_path), "epochs": 3}, [], error=error,
            backend=_Recording)
    if not recorded:
        assert _Recording.runs == {}
        return
    (run,) = _Recording.runs.values()
    assert run["failed"] is True and run["params"]["epochs"] == "3"
    assert run["tags"]["fopt.error"] == "bad row 3 in dataset.csv"
