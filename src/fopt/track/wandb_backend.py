"""Weights & Biases, where ``wandb`` is installed (``pip install fopt[wandb]``).

W&B runs cannot nest: a command's runs share a W&B *group* (the command's run name), and the
command's own run is written last, after its children, so no two W&B runs are open at once.
Without network (or without a login) runs are written offline under ``RUN/wandb`` for a later
``wandb sync``; an explicit ``WANDB_MODE`` is always respected. Nothing waits on a network that
is not there: reachability is probed once with a short TCP connect.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 2.0
INIT_TIMEOUT_S = 30.0


def online_reachable() -> bool:
    """Whether W&B's server answers a TCP connect within PROBE_TIMEOUT_S."""
    url = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "api.wandb.ai", port), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


class WandbBackend:
    name = "wandb"

    def __init__(self, uri: str | None, run_dir: Path):
        self.project = uri or os.environ.get("WANDB_PROJECT") or "fopt"  # --track-uri: the project
        self.dir = Path(run_dir)
        self.mode = os.environ.get("WANDB_MODE") or ("online" if online_reachable() else "offline")
        self.group = f"fopt-{uuid.uuid4().hex[:8]}"
        self._pending: dict[str, dict[str, Any]] = {}  # run id -> what to write at end_run

    def guard(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def start_run(self, name: str, parent_id: str | None, tags: dict[str, str]) -> str:
        run_id = uuid.uuid4().hex[:12]
        if parent_id is None:
            self.group = f"{name} {run_id[:6]}"
        self._pending[run_id] = {"name": name, "config": {}, "tags": dict(tags), "summary": {},
                                 "series": {}, "texts": {}, "files": []}
        return run_id

    def log(self, run_id: str, params: dict[str, str], metrics: dict[str, float],
            series: dict[str, list[tuple[int, float]]]) -> None:
        p = self._pending[run_id]
        p["config"].update(params)
        p["summary"].update(metrics)
        p["series"].update(series)

    def log_text(self, run_id: str, text: str, name: str) -> None:
        self._pending[run_id]["texts"][name] = text

    def log_file(self, run_id: str, path: Path) -> None:
        self._pending[run_id]["files"].append(Path(path))

    def find_run(self, sha256: str) -> str | None:
        return None

    def end_run(self, run_id: str, failed: bool) -> None:
        import wandb

        p = self._pending.pop(run_id)
        self.dir.mkdir(parents=True, exist_ok=True)
        run = wandb.init(project=self.project, name=p["name"], group=self.group, dir=str(self.dir),
                         mode=self.mode, config={**p["config"], **{f"tag.{k}": v for k, v in p["tags"].items()}},
                         settings=wandb.Settings(init_timeout=INIT_TIMEOUT_S, silent=True))
        try:
            steps = sorted({s for points in p["series"].values() for s, _ in points})
            for step in steps:  # one log call per epoch, every metric of that epoch in it
                run.log({k: v for k, points in p["series"].items() for s, v in points if s == step}, step=step)
            run.summary.update(p["summary"])
            for name, text in p["texts"].items():
                run.log({name: wandb.Html(f"<pre>{_escape(text)}</pre>")})
            if p["files"]:
                art = wandb.Artifact(f"fopt-{run_id}", type="fopt-files")
                for f in p["files"]:
                    art.add_file(str(f))
                run.log_artifact(art)
            sha = p["tags"].get("fopt.artifact.sha256")
            if sha and not p["files"]:  # --track-artifacts ref: a reference, nothing uploaded
                art = wandb.Artifact(f"fopt-{sha[:16]}", type="model")
                art.add_reference(Path(p["tags"]["fopt.artifact.path"]).as_uri(), checksum=False)
                run.log_artifact(art)
        finally:
            run.finish(exit_code=1 if failed else 0)

    def close(self) -> None:
        self._pending.clear()


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
