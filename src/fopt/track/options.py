"""The tracking options every tracked command shares, and the one call that hands it a result.

    @track_options("bench")          # --track, --track-uri, --track-artifacts
    def bench(...):
        ...
        tracked(result)              # what the tracker is told about, once the command is done

With ``--track none`` (the default) the wrapper calls the command and nothing else: no tracker
is imported and nothing is written. Under torchrun only rank 0 tracks (the others write nothing
either).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import click
from click.core import ParameterSource

from fopt.track.session import ARTIFACT_MODES, TRACKERS, TrackSettings, observe

_RESULTS = "fopt.track.results"


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _options() -> list[click.Option]:
    return [
        click.Option(["--track"], type=click.Choice(TRACKERS), default="none", show_default=True,
                     envvar="FOPT_TRACK",
                     help="Experiment tracker to record this run in (also $FOPT_TRACK); needs "
                          "pip install fopt[mlflow|tensorboard|wandb]."),
        click.Option(["--track-uri"], envvar="MLFLOW_TRACKING_URI", metavar="URI",
                     help="MLflow tracking URI (also $MLFLOW_TRACKING_URI; default "
                          "sqlite:///RUN/mlruns.db), TensorBoard folder (default RUN/tensorboard) "
                          "or W&B project (default fopt)."),
        click.Option(["--track-artifacts"], type=click.Choice(ARTIFACT_MODES), default="ref",
                     show_default=True,
                     help="ref: model files are referenced by path and sha256; copy: uploaded "
                          "to the tracker with the plots."),
    ]


def track_options(command: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add --track/--track-uri/--track-artifacts to a click command named `command`."""

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def wrapper(*args: Any, track: str, track_uri: str | None, track_artifacts: str, **kwargs: Any) -> Any:
            if track == "none" or not _is_main_process():
                return f(*args, **kwargs)
            ctx = click.get_current_context()
            if track != "mlflow" and ctx.get_parameter_source("track_uri") == ParameterSource.ENVIRONMENT:
                track_uri = None  # $MLFLOW_TRACKING_URI is MLflow's, not a TensorBoard folder
            settings = TrackSettings(track, track_uri, track_artifacts).check()
            results: list[Any] = []
            ctx.meta[_RESULTS] = results
            try:
                out = f(*args, **kwargs)
            except click.exceptions.Exit:
                raise
            except Exception as e:
                observe(settings, command, kwargs, results, error=e)
                raise
            observe(settings, command, kwargs, results)
            return out

        # Innermost in click's list = shown last in --help, after the command's own options,
        # wherever this decorator sits in the stack.
        wrapper.__click_params__ = [*reversed(_options()), *getattr(f, "__click_params__", [])]  # type: ignore[attr-defined]
        return wrapper

    return decorate


def tracked(result: Any) -> None:
    """Hand the command's result to the tracker (a no-op when tracking is off)."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None and _RESULTS in ctx.meta:
        ctx.meta[_RESULTS].append(result)
