"""MLflow with no server: the default store is SQLite inside the run folder."""

from __future__ import annotations

import pytest
from track_helpers import (
    child_for,
    client,
    pipeline_runs,
    report_rows,
    run_pipeline,
    sha256,
)

pytest.importorskip("mlflow")


def test_default_store_is_sqlite_in_the_run_folder_and_copy_uploads_the_files(tracked_run, synth_dataset,
                                                                               quick_calibration):
    run, _ = tracked_run
    assert not (run / "mlruns.db").exists()  # the server run wrote nothing local
    res = run_pipeline(run, synth_dataset, "--track", "mlflow", "--track-artifacts", "copy")
    assert res.exit_code == 0, res.output
    assert "warning" not in res.output.lower().replace("warning: other work", ""), res.output
    c = client(f"sqlite:///{run / 'mlruns.db'}")
    parent, children = pipeline_runs(c, run)
    rows = report_rows(run)
    assert len(children) == 1 + len(rows)
    assert parent.info.artifact_uri.startswith((run / "mlartifacts").resolve().as_uri())
    row = next(r for r in rows if r["method"] == "int8-static" and r["backend"] == "onnxruntime")
    int8 = child_for(children, row)
    assert int8.data.metrics["d_accuracy_pts"] == pytest.approx(row["d_accuracy_pts"], rel=1e-12)
    assert int8.data.tags["fopt.track.artifacts"] == "copy"
    # --track-artifacts copy: the model file itself is in the store, byte for byte
    local = c.download_artifacts(int8.info.run_id, "files/best.int8.onnx", str(run.parent / "dl"))
    assert sha256(local) == int8.data.tags["fopt.artifact.sha256"] == sha256(row["artifact"])
