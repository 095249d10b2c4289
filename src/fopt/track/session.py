"""One command's records into one tracker, without ever failing or stalling the command.

A command runs first and writes its run folder; then its records (`fopt.track.records`) go to the
tracker: the command's run, and a child run per model training and per artifact. The first error
a tracker raises (server down, disk full, bad URI) prints one warning line and ends tracking for
this command: nothing else is sent, nothing is retried, the command's exit status is its own.

Lineage: a child run is tagged with the run id of the run that made its parent artifact (matched
by sha256: in this command's runs first, else in the tracker's store, so an INT8 file made by
`fopt optimize` links to the pipeline or training run that made its FP32 parent), with the
parent's sha256 and path.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fopt.console import warn
from fopt.errors import (
    BusyError,
    MissingDependency,
    OutputExistsError,
    UsageError,
    one_line,
)
from fopt.track.mlflow_backend import MlflowBackend
from fopt.track.records import (
    RunRecord,
    bench_record,
    flatten,
    optimize_record,
    param_value,
    pipeline_record,
    train_record,
)
from fopt.track.tensorboard_backend import TensorBoardBackend
from fopt.track.wandb_backend import WandbBackend

TRACKERS = ("none", "mlflow", "tensorboard", "wandb")
BACKENDS: dict[str, Callable[[str | None, Path], Any]] = {
    "mlflow": MlflowBackend, "tensorboard": TensorBoardBackend, "wandb": WandbBackend}
# tracker -> (module it needs, the extra that installs it)
REQUIRES = {"mlflow": ("mlflow", "mlflow"), "tensorboard": ("tensorboard", "tensorboard"),
            "wandb": ("wandb", "wandb")}
ARTIFACT_MODES = ("ref", "copy")
# Errors that refuse a command before it does any work: no FAILED run for those (a mistyped
# option should not cost the seconds a tracker takes to start).
REFUSALS = (UsageError, OutputExistsError, BusyError, MissingDependency)


@dataclass(frozen=True)
class TrackSettings:
    tracker: str = "none"        # none | mlflow | tensorboard | wandb
    uri: str | None = None       # MLflow tracking URI / TensorBoard folder / W&B project
    artifacts: str = "ref"       # ref: path + sha256 tags; copy: upload model files and plots

    def check(self) -> TrackSettings:
        """The tracker's package is importable, else MissingDependency (before any work)."""
        if self.tracker in REQUIRES:
            module, extra = REQUIRES[self.tracker]
            if importlib.util.find_spec(module) is None:
                raise MissingDependency(f"--track {self.tracker} needs {module}: pip install fopt[{extra}]")
        return self


# ----------------------------------------------------------------------------- per command

def _first(results: list[Any]) -> Any:
    return results[0] if results else None


def run_folder(command: str, options: dict[str, Any], results: list[Any]) -> Path | None:
    """Where a command's default local store goes: its run folder (None: nothing to track)."""
    result = _first(results)
    if command == "pipeline":
        return Path(options["out"])
    if command == "train":
        if result is not None:
            return Path(result.run_dir)
        folder = options.get("out") or options.get("resume_dir")
        return Path(folder) if folder else None
    if command == "optimize":
        return Path(options.get("out_dir") or Path(options["model"]).parent)
    if command == "bench":  # no run folder of its own: beside its JSON or plots, else here
        if options.get("json_path"):
            return Path(options["json_path"]).parent
        return Path(options.get("plot_dir") or ".")
    raise ValueError(f"no tracking for command {command!r}")


def command_record(command: str, options: dict[str, Any], results: list[Any]) -> RunRecord | None:
    """The records of a finished command (None when it produced nothing to track)."""
    result = _first(results)
    params = {k: v for k, v in options.items() if v is not None}
    if command == "pipeline":
        return pipeline_record(options["out"], params)
    if result is None:
        return None
    if command == "train":
        if not getattr(result, "is_main", True):
            return None
        rec = train_record(result.run_dir)
        rec.params.update(flatten({k: v for k, v in params.items()
                                   if k not in rec.params and k in ("resume_dir", "force")}))
        return rec
    if command == "optimize":
        return optimize_record(result, params)
    if command == "bench":
        return bench_record(result, params)
    raise ValueError(f"no tracking for command {command!r}")


def failed_record(command: str, options: dict[str, Any], error: BaseException) -> RunRecord:
    return RunRecord(name=f"{command} (failed)", kind=command,
                     params=flatten({k: v for k, v in options.items() if v is not None}),
                     tags={"fopt.command": command, "fopt.error": param_value(one_line(error))})


# ----------------------------------------------------------------------------- the session

class Session:
    """Sends records to one backend; the first failure warns once and stops all further calls."""

    def __init__(self, settings: TrackSettings, run_dir: Path,
                 backend: Callable[[str | None, Path], Any] | None = None):
        self.settings = settings
        self.run_dir = Path(run_dir)
        self._factory = backend or BACKENDS[settings.tracker]
        self._backend: Any = None
        self.failed = False
        self.run_ids: dict[str, str] = {}   # record name -> run id, in this session

    def _call(self, method: str, *args: Any) -> Any:
        if self.failed:
            return None
        try:
            if self._backend is None:
                self._backend = self._factory(self.settings.uri, self.run_dir)
            with self._backend.guard():
                return getattr(self._backend, method)(*args)
        except Exception as e:  # noqa: BLE001 - any tracker error: the observed run must not fail
            self.fail(e)
            return None

    def fail(self, e: BaseException) -> None:
        if not self.failed:
            self.failed = True
            warn(f"{self.settings.tracker} tracking stopped, nothing more is sent for this run: "
                 f"{one_line(e)} (the run folder is complete)")

    def log(self, root: RunRecord, *, failed: bool = False) -> str | None:
        """The root record and its children; returns the root's run id (None if tracking failed)."""
        by_sha: dict[str, str] = {}
        root_id = self._log_run(root, None, by_sha)
        for child in root.children:
            child_id = self._log_run(child, root_id, by_sha)
            if child_id is not None:
                self._call("end_run", child_id, False)
        if root_id is not None:
            self._call("end_run", root_id, failed)
        self._call("close")
        return None if self.failed else root_id

    def _log_run(self, rec: RunRecord, parent_id: str | None, by_sha: dict[str, str]) -> str | None:
        if self.failed:
            return None
        tags = dict(rec.tags)
        lineage = self._lineage(rec, by_sha)
        if rec.parent_sha256:
            tags["fopt.lineage.parent_sha256"] = rec.parent_sha256
        if rec.parent_path:
            tags["fopt.lineage.parent_path"] = rec.parent_path
        if lineage:
            tags["fopt.lineage.parent_run_id"] = lineage
        tags["fopt.track.artifacts"] = self.settings.artifacts
        run_id = self._call("start_run", rec.name, parent_id, tags)
        if run_id is None:
            return None
        self.run_ids[rec.name] = run_id
        if rec.sha256:
            by_sha.setdefault(rec.sha256, run_id)  # the first run of a file: its own runtime
        self._call("log", run_id, rec.params, rec.metrics, rec.series)
        for name, text in rec.texts.items():
            self._call("log_text", run_id, text, name)
        if self.settings.artifacts == "copy":
            for path in [*rec.files, *([rec.artifact] if rec.artifact else [])]:
                if Path(path).is_file():
                    self._call("log_file", run_id, Path(path))
        return run_id

    def _lineage(self, rec: RunRecord, by_sha: dict[str, str]) -> str | None:
        if rec.parent_key and rec.parent_key in self.run_ids:
            return self.run_ids[rec.parent_key]
        if not rec.parent_sha256:
            return None
        if rec.parent_sha256 in by_sha:
            return by_sha[rec.parent_sha256]
        return self._call("find_run", rec.parent_sha256)


def observe(settings: TrackSettings, command: str, options: dict[str, Any], results: list[Any],
            error: BaseException | None = None, backend: Callable[[str | None, Path], Any] | None = None
            ) -> Session | None:
    """Send a finished (or failed) command to its tracker. Never raises."""
    try:
        folder = run_folder(command, options, results)
        if error is not None and (isinstance(error, REFUSALS) or folder is None or not folder.is_dir()):
            return None  # refused, or failed before its run folder existed: nothing ran
        if folder is None:
            return None
        session = Session(settings, folder, backend)
    except Exception as e:  # noqa: BLE001 - tracking never fails the command
        warn(f"{settings.tracker} tracking stopped: {one_line(e)}")
        return None
    try:
        rec = (failed_record(command, options, error) if error is not None
               else command_record(command, options, results))
    except Exception as e:  # noqa: BLE001 - unreadable outputs: the files still are what counts
        session.fail(e)
        return session
    if rec is not None:
        session.log(rec, failed=error is not None)
    return session
