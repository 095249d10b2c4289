"""A real MLflow tracking server: the tiny pipeline reported to it, read back through MlflowClient.

The last test stops the server while fopt is talking to it (the fixture restarts it on demand for
any test that runs later).
"""

from __future__ import annotations

import csv
import json
import time

import pytest
from click.testing import CliRunner
from track_helpers import (
    child_for,
    client,
    pipeline_runs,
    report_rows,
    run_pipeline,
    sha256,
)

from fopt.artifacts import read_card
from fopt.cli import cli

pytest.importorskip("mlflow")


def test_pipeline_is_a_parent_run_with_a_child_per_training_and_artifact(tracked_run, mlflow_server):
    run, _ = tracked_run
    c = client(mlflow_server.ensure().uri)
    parent, children = pipeline_runs(c, run)
    rows = report_rows(run)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["models"] == '["tiny"]'
    assert "report.json" in {a.path for a in c.list_artifacts(parent.info.run_id)}
    train = [r for r in children if r.data.tags.get("fopt.kind") == "train"]
    assert len(train) == 1 and len(children) == 1 + len(rows)
    assert all(r.info.status == "FINISHED" for r in children)

    # per-epoch training metrics, step = epoch, equal to history.csv
    history = list(csv.DictReader((run / "tiny" / "train" / "history.csv").read_text().splitlines()))
    got = [(m.step, m.value) for m in c.get_metric_history(train[0].info.run_id, "epoch/val_acc")]
    assert got == [(int(h["epoch"]), pytest.approx(float(h["val_acc"]), rel=1e-12)) for h in history]

    bench = json.loads((run / "tiny" / "bench.json").read_text())["results"]
    for row in rows:
        m = child_for(children, row).data.metrics
        # the numbers the report ranks by, exactly as report.json has them
        for key in ("accuracy", "macro_f1", "d_accuracy_pts", "d_macro_f1_pts", "p50_b1_ms"):
            assert m[key] == pytest.approx(row[key], rel=1e-12), (row["method"], key)
        for kind, err in row["error_pct"].items():
            if err is not None:  # an estimate with no number (e.g. no calibration for a runtime)
                assert m[f"estimate_error_pct_{kind}_b1"] == pytest.approx(err, rel=1e-12)
        # every batch size of bench.json: p50/p90 and throughput
        for b in (b for b in bench if b["artifact"] == row["artifact"] and b["backend"] == row["backend"]):
            n = b["batch_size"]
            assert m[f"p50_ms_b{n}"] == pytest.approx(b["latency_ms"]["p50"], rel=1e-12)
            assert m[f"p90_ms_b{n}"] == pytest.approx(b["latency_ms"]["p90"], rel=1e-12)
            assert m[f"throughput_ips_b{n}"] == pytest.approx(b["throughput_ips"], rel=1e-12)
    assert any(r["d_accuracy_pts"] is not None for r in rows)


def test_lineage_links_each_artifact_to_the_run_of_its_parent(tracked_run, mlflow_server):
    run, _ = tracked_run
    c = client(mlflow_server.ensure().uri)
    _, children = pipeline_runs(c, run)
    by_id = {r.info.run_id: r for r in children}
    rows = {(r["method"], r["backend"]): r for r in report_rows(run)}
    int8 = child_for(children, rows[("int8-static", "onnxruntime")])
    onnx_path = run / "tiny" / "export" / "best.onnx"
    # the INT8 file came from best.onnx: its sha256, its path, and the run standing for that file
    assert int8.data.tags["fopt.lineage.parent_sha256"] == sha256(onnx_path)
    assert int8.data.tags["fopt.lineage.parent_path"] == str(onnx_path.resolve())
    onnx_run = by_id[int8.data.tags["fopt.lineage.parent_run_id"]]
    assert onnx_run.data.tags["fopt.artifact.sha256"] == sha256(onnx_path)
    # ... which came from best.pt, which came from the training run
    ckpt_run = by_id[onnx_run.data.tags["fopt.lineage.parent_run_id"]]
    assert ckpt_run.data.tags["fopt.artifact.sha256"] == sha256(run / "tiny" / "train" / "best.pt")
    assert by_id[ckpt_run.data.tags["fopt.lineage.parent_run_id"]].data.tags["fopt.kind"] == "train"
    # the card as params; with the default --track-artifacts ref the model file is not uploaded
    card = read_card(run / "tiny" / "optimize" / "best.int8.onnx")
    assert int8.data.params["card.quantization.mode"] == card["quantization"]["mode"]
    assert int8.data.params["card.precision"] == "int8"
    assert int8.data.tags["fopt.artifact.sha256"] == sha256(run / "tiny" / "optimize" / "best.int8.onnx")
    assert {a.path for a in c.list_artifacts(int8.info.run_id)} == {"best.int8.onnx.json"}


def test_bench_links_to_the_pipeline_run_of_its_parent_across_commands(tracked_run, mlflow_server, tmp_path):
    run, _ = tracked_run
    uri = mlflow_server.ensure().uri
    int8 = run / "tiny" / "optimize" / "best.int8.onnx"
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(cli, ["bench", str(int8), "--batch-sizes", "1", "--min-time", "0.05", "--threads",
                                   "1", "--no-estimate", "--json", str(out), "--track", "mlflow",
                                   "--track-uri", uri], env={"MLFLOW_TRACKING_URI": None})
    assert res.exit_code == 0, res.output
    c = client(uri)
    bench_run = next(r for r in c.search_runs([c.get_experiment_by_name("fopt").experiment_id],
                                              filter_string="tags.`fopt.kind` = 'bench'"))
    child = next(r for r in c.search_runs([bench_run.info.experiment_id],
                                          filter_string=f"tags.`mlflow.parentRunId` = '{bench_run.info.run_id}'"))
    row = json.loads(out.read_text())["results"][0]
    assert child.data.metrics["p50_ms_b1"] == pytest.approx(row["latency_ms"]["p50"], rel=1e-12)
    assert bench_run.data.tags["fopt.machine.cpu"]
    # its parent file (best.onnx) was tracked by the pipeline: found in the store by sha256
    parent = c.get_run(child.data.tags["fopt.lineage.parent_run_id"])
    assert parent.data.tags["fopt.artifact.sha256"] == sha256(run / "tiny" / "export" / "best.onnx")
    assert parent.data.tags["fopt.command"] == "pipeline"


def test_server_stopping_mid_run_costs_one_warning_and_nothing_else(tracked_run, synth_dataset, mlflow_server,
                                                                    quick_calibration, monkeypatch):
    """The server dies after fopt created the pipeline's run: the command still succeeds, with one
    warning line, and nothing more is sent (no retries, no further calls)."""
    from fopt.track import session
    run, _ = tracked_run
    server = mlflow_server.ensure()
    calls_after_stop, stopped_at = [], []
    real = session.BACKENDS["mlflow"]

    class DyingServer(real):
        def start_run(self, *a, **k):
            run_id = super().start_run(*a, **k)
            if server.alive:
                server.stop()  # right after the pipeline's own run exists on the server
                stopped_at.append(time.perf_counter())
            return run_id

        def __getattribute__(self, name):
            if name in ("log", "log_text", "log_file", "end_run", "find_run") and not server.alive:
                calls_after_stop.append(name)
            return super().__getattribute__(name)

    monkeypatch.setitem(session.BACKENDS, "mlflow", DyingServer)
    res = run_pipeline(run, synth_dataset, "--track", "mlflow", "--track-uri", server.uri)
    after_stop = time.perf_counter() - stopped_at[0]
    assert res.exit_code == 0, res.output
    assert (run / "report.json").is_file()
    warnings = [line for line in res.output.splitlines() if "tracking stopped" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: mlflow tracking stopped"), res.output
    assert "Traceback" not in res.output
    assert calls_after_stop == ["log"]  # the first call after the stop failed; none followed it
    assert after_stop < 20, f"a dead server cost {after_stop:.0f} s"
