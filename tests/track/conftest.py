"""A real MLflow tracking server (SQLite backend, free localhost port) and one tiny tracked pipeline.

The server is the venv's own ``mlflow server``; readiness is a bounded poll of ``/health``. The
pipeline runs once per session (tiny model, 32 px, one epoch, static INT8 only, one bench process)
and reports to that server; the other tests re-observe its run folder with other trackers, which
re-runs nothing (every stage is skipped) and costs seconds.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from track_helpers import run_pipeline

MLFLOW = Path(sys.executable).with_name("mlflow")
READY_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """`mlflow server` in its own process group; `stop()` kills it (and its workers) for good."""

    def __init__(self, root: Path):
        self.root = root
        self.db_uri = f"sqlite:///{root / 'server.db'}"
        self.start()

    def ensure(self) -> MlflowServer:
        """Ready to answer: waits for a starting server, restarts a stopped one (same database,
        new port)."""
        if not self.alive:
            self.start()
        if not self.ready:
            self._wait_ready()
        return self

    def start(self) -> None:
        """Launch it; `ensure()` waits until it answers (so the caller can work meanwhile)."""
        self.ready = False
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        root = self.root
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # no job-runner processes
        env.pop("MLFLOW_TRACKING_URI", None)
        self.log = open(root / "server.log", "a")  # noqa: SIM115 - open while the server runs
        self.proc = subprocess.Popen(
            [str(MLFLOW), "server", "--backend-store-uri", self.db_uri, "--artifacts-destination",
             str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        self.ready = True
                        return
            except OSError:
                time.sleep(0.3)
        self.stop()
        tail = (self.root / "server.log").read_text()[-2000:]
        pytest.fail(f"mlflow server did not become ready in {READY_TIMEOUT_S} s:\n{tail}")

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
            except ProcessLookupError:
                pass
        self.log.close()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    if not MLFLOW.exists():
        pytest.skip("the mlflow executable is not installed beside this Python (pip install fopt[mlflow])")
    server = MlflowServer(tmp_path_factory.mktemp("mlflow_server"))
    yield server  # tests call server.ensure() first: the failure test stops it
    server.stop()


@pytest.fixture(scope="session")
def calibration_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture()
def quick_calibration(monkeypatch, calibration_cache):
    """A real but reduced machine calibration in a private cache (the full one takes a minute)."""
    import fopt.bench.costmodel.calibrate as cal

    monkeypatch.setenv("FOPT_CACHE_DIR", str(calibration_cache))
    real = cal.calibrate
    monkeypatch.setattr(cal, "calibrate", lambda *a, **k: real(*a, **{**k, "quick": True}))


@pytest.fixture(scope="session")
def tracked_run(synth_dataset, mlflow_server, calibration_cache, tmp_path_factory):
    """The tiny pipeline, tracked to the server: (run folder, click result of the tracked run).

    It is computed while the server starts (both take tens of seconds on 2 cores), then run again
    with --track: tracking reads the run folder when a command ends, so that second run (every
    stage skipped) reports exactly what a first tracked run would."""
    import fopt.bench.costmodel.calibrate as cal

    run = tmp_path_factory.mktemp("tracked") / "run"
    real = cal.calibrate
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FOPT_CACHE_DIR", str(calibration_cache))
        mp.setattr(cal, "calibrate", lambda *a, **k: real(*a, **{**k, "quick": True}))
        first = run_pipeline(run, synth_dataset)
        assert first.exit_code == 0, first.output
        res = run_pipeline(run, synth_dataset, "--track", "mlflow", "--track-uri", mlflow_server.ensure().uri)
    assert res.exit_code == 0, res.output
    assert "skipped" in res.output and "warning: mlflow" not in res.output, res.output
    return run, res
