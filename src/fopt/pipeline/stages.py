"""Resumable stages: a stage is skipped when its outputs exist and its inputs have not changed.

The ledger (``stages.json`` in the run folder) records, per stage, the sha256 of every input file,
the options that shape its outputs, and the outputs it produced. A re-run compares those; a changed
checkpoint (new sha256) or a changed option re-runs the stage and, through their inputs, every
stage after it. ``force`` re-runs regardless.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fopt.artifacts import sha256_file, write_json_atomic


@dataclass
class Stage:
    name: str
    run: Callable[[], Any]
    inputs: list[Path] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)


def _fingerprint(paths: list[Path]) -> dict[str, str | None]:
    return {str(p): (sha256_file(p) if Path(p).is_file() else None) for p in paths}


class StageLedger:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.records: dict[str, Any] = {}
        if self.path.exists():
            try:
                self.records = json.loads(self.path.read_text())
            except json.JSONDecodeError:
                self.records = {}  # a damaged ledger only costs a re-run

    def is_fresh(self, stage: Stage) -> bool:
        rec = self.records.get(stage.name)
        if not rec:
            return False
        if rec.get("params") != json.loads(json.dumps(stage.params, default=str)):
            return False
        if any(not Path(p).exists() for p in stage.outputs):
            return False
        return rec.get("inputs") == _fingerprint(stage.inputs)

    def run(self, stage: Stage, force: bool = False) -> tuple[str, Any]:
        """Run or skip `stage`; returns ("ran"|"skipped", result-or-None)."""
        if not force and self.is_fresh(stage):
            return "skipped", None
        t0 = time.perf_counter()
        result = stage.run()
        self.records[stage.name] = {
            "params": json.loads(json.dumps(stage.params, default=str)),
            "inputs": _fingerprint(stage.inputs),
            "outputs": [str(p) for p in stage.outputs],
            "seconds": round(time.perf_counter() - t0, 2),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        write_json_atomic(self.path, self.records)
        return "ran", result
