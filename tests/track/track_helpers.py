"""Reading a tracked run back: MLflow runs of one pipeline, report rows, sha256 of files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner

PIPELINE_ARGS = ["--model", "tiny", "--epochs", "1", "--img-size", "32", "--workers", "0",
                 "--method", "int8-static", "--calib-size", "32", "--batch-sizes", "1,2",
                 "--min-time", "0.05", "--processes", "1", "--threads", "1"]


def run_pipeline(run: Path, dataset: Path, *track_args: str):
    """`fopt pipeline` on the tiny setup, in-process, with no tracker settings from the
    environment; returns click's result."""
    from fopt.cli import cli

    return CliRunner().invoke(cli, ["pipeline", "--data", str(dataset), "--out", str(run),
                                    *PIPELINE_ARGS, *track_args],
                              env={"MLFLOW_TRACKING_URI": None, "FOPT_TRACK": None})


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def all_runs(c: Any) -> list[Any]:
    exp = c.get_experiment_by_name("fopt")
    assert exp is not None, "no 'fopt' experiment in the store"
    return c.search_runs([exp.experiment_id], max_results=5000)


def pipeline_runs(c: Any, run_dir: Path) -> tuple[Any, list[Any]]:
    """The (latest) pipeline run for `run_dir` and its child runs."""
    runs = all_runs(c)
    parents = [r for r in runs if r.data.tags.get("fopt.kind") == "pipeline"
               and r.data.tags.get("fopt.run_dir") == str(Path(run_dir).resolve())]
    assert parents, f"no pipeline run for {run_dir}"
    parent = max(parents, key=lambda r: r.info.start_time)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return parent, children


def report_rows(run_dir: Path) -> list[dict[str, Any]]:
    return json.loads((Path(run_dir) / "report.json").read_text())["rows"]


def child_for(children: list[Any], row: dict[str, Any]) -> Any:
    """The child run of one report row: its file on its runtime."""
    hits = [r for r in children if r.data.tags.get("fopt.artifact.path") == row["artifact"]
            and r.data.tags.get("fopt.backend") == row["backend"]]
    assert len(hits) == 1, (row["artifact"], row["backend"], [h.info.run_name for h in hits])
    return hits[0]
