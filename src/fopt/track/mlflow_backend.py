"""MLflow: the main tracker (fully offline with a local SQLite store, or any tracking server).

Only the `MlflowClient` API is used (no fluent API, so no global active run is left behind in a
program that calls fopt). mlflow is imported on first use: it takes seconds to import.

Without ``--track-uri`` (or ``MLFLOW_TRACKING_URI``) the store is ``sqlite:///RUN/mlruns.db`` with
artifacts under ``RUN/mlartifacts``: the tracker lives beside the run it describes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# A dead or unreachable server must cost seconds, not MLflow's default of 7 retries with
# exponential backoff and a 120 s timeout each (minutes). Applied only around fopt's own calls,
# and only where the user has not set them.
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
# An upload (--track-artifacts copy) of a large engine may keep a server busy well past 5 s
# before it answers; only uploads get this longer limit.
UPLOAD_TIMEOUT_S = "120"
# Loggers that narrate retries and database migrations on stderr: fopt says one line instead.
QUIET_LOGGERS = ("mlflow", "alembic", "urllib3", "sqlalchemy")
# MLflow's per-request limits for log_batch.
BATCH_PARAMS, BATCH_METRICS = 100, 1000
EXPERIMENT = "fopt"  # default experiment name; MLFLOW_EXPERIMENT_NAME overrides


def local_store(run_dir: Path) -> tuple[str, str]:
    """The default store of a run folder: (tracking URI, artifact location)."""
    run_dir = Path(run_dir).resolve()
    return f"sqlite:///{run_dir / 'mlruns.db'}", (run_dir / "mlartifacts").as_uri()


class MlflowBackend:
    name = "mlflow"

    def __init__(self, uri: str | None, run_dir: Path):
        if uri:
            self.uri, self.artifact_location = uri, None  # a server decides where artifacts go
        else:
            self.uri, self.artifact_location = local_store(run_dir)
        self._client: Any = None
        self._experiment_id: str | None = None

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        import mlflow  # noqa: F401 - its import configures its loggers; quieten them after that

        saved_env = {k: os.environ.get(k) for k in HTTP_LIMITS}
        for k, v in HTTP_LIMITS.items():
            os.environ.setdefault(k, v)
        saved_levels = {n: logging.getLogger(n).level for n in QUIET_LOGGERS}
        for n in QUIET_LOGGERS:
            logging.getLogger(n).setLevel(logging.CRITICAL)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
        finally:
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            for n, level in saved_levels.items():
                logging.getLogger(n).setLevel(level)

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
            exp = self.client.get_experiment_by_name(name)
            self._experiment_id = (exp.experiment_id if exp is not None else
                                   self.client.create_experiment(name, artifact_location=self.artifact_location))
        return self._experiment_id

    def start_run(self, name: str, parent_id: str | None, tags: dict[str, str]) -> str:
        if parent_id is not None:
            tags = {**tags, "mlflow.parentRunId": parent_id}  # how the MLflow UI nests runs
        return self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id

    def log(self, run_id: str, params: dict[str, str], metrics: dict[str, float],
            series: dict[str, list[tuple[int, float]]]) -> None:
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        ms = [Metric(k, v, now, 0) for k, v in metrics.items()]
        ms += [Metric(k, v, now, step) for k, points in series.items() for step, v in points]
        ps = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(ps), BATCH_PARAMS):
            self.client.log_batch(run_id, params=ps[i:i + BATCH_PARAMS])
        for i in range(0, len(ms), BATCH_METRICS):
            self.client.log_batch(run_id, metrics=ms[i:i + BATCH_METRICS])

    def log_text(self, run_id: str, text: str, name: str) -> None:
        self.client.log_text(run_id, text, name)

    def log_file(self, run_id: str, path: Path) -> None:
        key = "MLFLOW_HTTP_REQUEST_TIMEOUT"
        if os.environ.get(key) == HTTP_LIMITS[key]:  # ours, not the user's: `guard` restores it
            os.environ[key] = UPLOAD_TIMEOUT_S
        self.client.log_artifact(run_id, str(path), artifact_path="files")

    def find_run(self, sha256: str) -> str | None:
        """The latest run in this store whose artifact has this sha256 (lineage across commands)."""
        runs = self.client.search_runs([self.experiment_id],
                                       filter_string=f"tags.`fopt.artifact.sha256` = '{sha256}'",
                                       max_results=1, order_by=["attributes.start_time DESC"])
        return runs[0].info.run_id if runs else None

    def end_run(self, run_id: str, failed: bool) -> None:
        self.client.set_terminated(run_id, "FAILED" if failed else "FINISHED")

    def close(self) -> None:
        self._client = None
