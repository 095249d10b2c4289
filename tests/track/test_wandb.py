"""W&B (only where wandb is installed): no network means offline runs under the run folder."""

from __future__ import annotations

import socket

import pytest
from track_helpers import report_rows, run_pipeline


def test_without_network_runs_are_written_offline(tracked_run, synth_dataset, quick_calibration, monkeypatch,
                                                   tmp_path):
    pytest.importorskip("wandb")
    run, _ = tracked_run
    with socket.socket() as sock:  # W&B's server is a port nobody listens on: "no network"
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):  # nothing in ~
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    res = run_pipeline(run, synth_dataset, "--track", "wandb")
    assert res.exit_code == 0, res.output
    assert "tracking stopped" not in res.output, res.output
    offline = sorted((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 + len(report_rows(run))  # the pipeline, its training, every row

    def logged(key: str) -> int:
        return sum(key.encode() in b"".join(p.read_bytes() for p in d.glob("*.wandb")) for d in offline)

    assert logged("epoch/val_acc") == 1        # the training run's per-epoch metrics
    assert logged("d_accuracy_pts") == len(report_rows(run))
