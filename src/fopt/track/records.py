"""What a tracker is told: fopt's outputs turned into tracker-neutral run records.

Every record is built from what a command returned or wrote into its run folder (a training
result, ``history.csv``, artifact cards, ``bench.json``, ``summary.json``, ``report.json``), never
from state inside the stages, so what a tracker shows is exactly what the files say. A tracker
backend (`fopt.track.mlflow_backend`, ...) only stores records; lineage between them is resolved
by `fopt.track.session`.

Names, one convention for every command, so runs of different commands compare in one table:
``accuracy`` and ``macro_f1`` are fractions (0-1) on the validation split, ``d_accuracy_pts`` and
``d_macro_f1_pts`` their change against the FP32 parent in percentage points, latencies are
``*_ms`` and throughput ``*_ips`` (items per second), suffixed ``_b<batch>`` per batch size.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fopt import __version__
from fopt.artifacts import read_card, sha256_file
from fopt.errors import InputError

# MLflow refuses a param value over 6000 characters (and W&B's UI folds long ones): longer
# fields are cut here, and the full card still travels as a file.
MAX_PARAM_CHARS = 6000
_KEY_BAD = re.compile(r"[^A-Za-z0-9_\-. /]")
# Card fields that are not descriptions of the artifact but its identity or lineage: tags.
_CARD_IDENTITY = ("sha256", "size_bytes", "parent", "created")


@dataclass
class RunRecord:
    """One tracker run: a command, one model's training, or one artifact."""

    name: str
    kind: str                                   # pipeline, train, optimize, bench, artifact
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # per epoch
    texts: dict[str, str] = field(default_factory=dict)     # file name -> content (small)
    files: list[Path] = field(default_factory=list)         # uploaded with --track-artifacts copy
    artifact: Path | None = None                # the model file this run stands for
    sha256: str | None = None                   # ... its sha256 (lineage is matched on it)
    parent_sha256: str | None = None            # the artifact it was made from (card "parent")
    parent_path: str | None = None
    parent_key: str | None = None               # or: the record (by name) it was made from
    children: list[RunRecord] = field(default_factory=list)


# ----------------------------------------------------------------------------- small helpers

def clean_key(key: str) -> str:
    """A key every tracker accepts (MLflow: letters, digits, _-. / and space; 250 chars)."""
    return _KEY_BAD.sub("_", key)[:250]


def param_value(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str)
    return s if len(s) <= MAX_PARAM_CHARS else s[: MAX_PARAM_CHARS - 14] + "...(truncated)"


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dicts become dotted keys; lists and scalars become strings; None is left out."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif v is not None:
            out[clean_key(key)] = param_value(v)
    return out


def number(v: Any) -> float | None:
    """`v` as a finite float, else None (a tracker metric must be a real number)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def numbers(d: dict[str, Any]) -> dict[str, float]:
    return {clean_key(k): n for k, v in d.items() if (n := number(v)) is not None}


def _json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def _card(path: str | Path) -> dict[str, Any]:
    try:
        return read_card(path, required=False) or {}
    except InputError:
        return {}  # a damaged card costs its params, not the tracking of the run


def _sha256(path: Path, card: dict[str, Any]) -> str | None:
    """The card's sha256 when it describes the file as it is (same size), else hashed now."""
    if not path.is_file():
        return None
    if card.get("sha256") and card.get("size_bytes") == path.stat().st_size:
        return card["sha256"]
    return sha256_file(path)


def artifact_record(path: str | Path, name: str, metrics: dict[str, float] | None = None) -> RunRecord:
    """A model file's run: its card as params (identity and lineage as tags), its metrics."""
    path = Path(path)
    card = _card(path)
    params = flatten({k: v for k, v in card.items() if k not in _CARD_IDENTITY}, "card.")
    tags = {"fopt.artifact.path": str(path.resolve()), "fopt.artifact.name": path.name}
    for key in ("kind", "format", "precision", "method"):
        if card.get(key):
            tags[f"fopt.{key}"] = str(card[key])
    if card.get("created"):
        tags["fopt.artifact.created"] = str(card["created"])
    sha = _sha256(path, card)
    if sha:
        tags["fopt.artifact.sha256"] = sha
    if path.is_file():
        tags["fopt.artifact.size_bytes"] = str(path.stat().st_size)
    parent = card.get("parent") or {}
    rec = RunRecord(name=name, kind="artifact", params=params, tags=tags, metrics=dict(metrics or {}),
                    artifact=path, sha256=sha, parent_sha256=parent.get("sha256"),
                    parent_path=parent.get("path"))
    if card:
        rec.texts[f"{path.name}.json"] = json.dumps(card, indent=2, default=str)
    return rec


def bench_metrics(rows: Iterable[dict[str, Any]]) -> dict[str, float]:
    """p50/p90/p99 and throughput per batch size, with every estimate and its error in percent."""
    out: dict[str, float] = {}
    for r in rows:
        if r.get("status") != "ok":
            continue
        b = r["batch_size"]
        lat = r.get("latency_ms") or {}
        for q in ("p50", "p90", "p99", "mean", "std"):
            if (v := number(lat.get(q))) is not None:
                out[f"{q}_ms_b{b}"] = v
        if (v := number(r.get("throughput_ips"))) is not None:
            out[f"throughput_ips_b{b}"] = v
        for kind, v in (r.get("estimate_ms") or {}).items():
            if (v := number(v)) is not None:
                out[clean_key(f"estimate_ms_{kind}_b{b}")] = v
        for kind, v in (r.get("error_pct") or {}).items():
            if (v := number(v)) is not None:
                out[clean_key(f"estimate_error_pct_{kind}_b{b}")] = v
        if (v := number(r.get("spread_pct"))) is not None:
            out[f"spread_pct_b{b}"] = v
    return out


def bench_table(rows: Iterable[dict[str, Any]]) -> str:
    """The bench rows as a Markdown table (what `fopt bench` prints), for a tracker's text view."""
    kinds = ("naive", "roofline", "calibrated")
    head = ["artifact", "backend", "batch", "p50 ms", "p90 ms", "items/s",
            *[f"{k} est. ms (err %)" for k in kinds]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def f(v: Any) -> str:
        return "-" if number(v) is None else f"{v:.4g}"

    for r in rows:
        if r.get("status") != "ok":
            lines.append(f"| {Path(r['artifact']).name} | {r.get('backend')} | {r.get('batch_size')} | "
                         f"error: {r.get('error')} |")
            continue
        lat = r.get("latency_ms") or {}
        est, err = r.get("estimate_ms") or {}, r.get("error_pct") or {}
        cells = [Path(r["artifact"]).name, str(r.get("backend")), str(r["batch_size"]), f(lat.get("p50")),
                 f(lat.get("p90")), f(r.get("throughput_ips")),
                 *[f"{f(est.get(k))} ({f(err.get(k))})" for k in kinds]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _by_pair(results: Iterable[dict[str, Any]]) -> dict[tuple[str, str | None], list[dict[str, Any]]]:
    """Bench rows grouped by (artifact, backend): one file may be measured on several runtimes."""
    out: dict[tuple[str, str | None], list[dict[str, Any]]] = {}
    for r in results:
        out.setdefault((str(Path(r["artifact"])), r.get("backend")), []).append(r)
    return out


def machine_tags(machine: dict[str, Any] | None) -> dict[str, str]:
    """Where latencies were measured: the facts a reader filters runs by."""
    if not machine:
        return {}
    cpu, gpu = machine.get("cpu") or {}, machine.get("gpu") or {}
    tags = {"fopt.machine.cpu": cpu.get("model"), "fopt.machine.cores": cpu.get("physical_cores"),
            "fopt.machine.os": machine.get("os"),
            "fopt.machine.gpu": gpu.get("name") if isinstance(gpu, dict) else gpu}
    flags = [k for k, on in (cpu.get("flags") or {}).items() if on]
    if flags:
        tags["fopt.machine.cpu_flags"] = ",".join(flags)
    return {k: str(v) for k, v in tags.items() if v not in (None, "")}


def read_history(path: Path) -> dict[str, list[tuple[int, float]]]:
    """history.csv (one row per epoch) as metric -> [(epoch, value)]."""
    series: dict[str, list[tuple[int, float]]] = {}
    if not path.is_file():
        return series
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                epoch = int(row.pop("epoch"))
            except (KeyError, TypeError, ValueError):
                continue
            for k, v in row.items():
                try:
                    x = float(v)
                except (TypeError, ValueError):
                    continue
                if math.isfinite(x):
                    series.setdefault(clean_key(f"epoch/{k}"), []).append((epoch, x))
    return series


def _base_tags(command: str) -> dict[str, str]:
    return {"fopt.command": command, "fopt.version": __version__}


# ----------------------------------------------------------------------------- per command

def train_record(run_dir: str | Path, name: str | None = None) -> RunRecord:
    """A training run folder (`fopt train`, or a model's ``train/`` in a pipeline)."""
    run_dir = Path(run_dir)
    cfg = _json(run_dir / "config.json") if (run_dir / "config.json").is_file() else {}
    rep = _json(run_dir / "report.json") if (run_dir / "report.json").is_file() else {}
    model = rep.get("model") or cfg.get("model") or run_dir.name
    metrics: dict[str, float] = {}
    for split in ("val", "test"):
        m = rep.get(split) or {}
        for key in ("accuracy", "macro_f1"):
            if (v := number(m.get(key))) is not None:
                metrics[f"{split}_{key}" if split == "test" else key] = v
    for key in ("best_epoch", "params", "trainable_params"):
        if (v := number(rep.get(key))) is not None:
            metrics[key] = v
    best = run_dir / "best.pt"
    card = _card(best)
    tags = {**_base_tags("train"), "fopt.kind": "train", "fopt.model": str(model),
            "fopt.run_dir": str(run_dir.resolve())}
    sha = _sha256(best, card)
    if sha:  # the checkpoint this training produced: artifacts made from it link here
        tags.update({"fopt.artifact.path": str(best.resolve()), "fopt.artifact.sha256": sha})
    rec = RunRecord(name=name or f"{model} train", kind="train", params=flatten(cfg), tags=tags,
                    metrics=metrics, series=read_history(run_dir / "history.csv"), sha256=sha,
                    artifact=best if best.is_file() else None)
    txt = run_dir / "classification_report.txt"
    if txt.is_file():
        rec.texts["classification_report.txt"] = txt.read_text()
    rec.files = [p for p in (run_dir / n for n in ("history.csv", "curves.png", "confusion_matrix.png",
                                                   "report.json", "config.json")) if p.is_file()]
    return rec


def pipeline_record(run_dir: str | Path, options: dict[str, Any]) -> RunRecord:
    """A `fopt pipeline` run folder: the pipeline, then per model its training and every artifact
    (numbers from report.json, per-batch latencies from each model's bench.json)."""
    run_dir = Path(run_dir).resolve()
    report = _json(run_dir / "report.json")
    root = RunRecord(name=f"pipeline {run_dir.name}", kind="pipeline", params=flatten(options),
                     tags={**_base_tags("pipeline"), "fopt.kind": "pipeline", "fopt.run_dir": str(run_dir)})
    rec = report.get("recommendation") or {}
    if rec.get("artifact"):
        root.tags["fopt.recommendation.artifact"] = str(rec["artifact"])
    if rec.get("why"):
        root.tags["fopt.recommendation.why"] = param_value(rec["why"])
    for name in ("report.md", "report.json"):
        if (run_dir / name).is_file():
            root.texts[name] = (run_dir / name).read_text()
    root.files = [p for p in [run_dir / "accuracy_vs_latency.png"] if p.is_file()]
    rows_by_model: dict[str, list[dict[str, Any]]] = {}
    for r in report.get("rows", []):
        rows_by_model.setdefault(r["model"], []).append(r)
    for model, rows in rows_by_model.items():
        mdir = run_dir / model
        summary = _json(mdir / "summary.json") if (mdir / "summary.json").is_file() else {}
        bench = _json(mdir / "bench.json") if (mdir / "bench.json").is_file() else {}
        root.tags.update(machine_tags(summary.get("machine") or bench.get("machine")))
        if bench.get("results"):
            root.texts[f"bench_{model}.md"] = bench_table(bench["results"])
        train = train_record(mdir / "train", name=f"{model} train")
        train.tags["fopt.command"] = "pipeline"
        # best.pt has its own artifact run below (linked to this one): one run per file
        train.artifact = train.sha256 = None
        for key in ("fopt.artifact.path", "fopt.artifact.sha256"):
            train.tags.pop(key, None)
        root.children.append(train)
        by_pair = _by_pair(bench.get("results", []))
        per_file: dict[str, int] = {}
        for r in rows:
            per_file[r["artifact"]] = per_file.get(r["artifact"], 0) + 1
        for r in rows:
            metrics = numbers({k: r.get(k) for k in ("accuracy", "macro_f1", "d_accuracy_pts", "d_macro_f1_pts",
                                                    "size_mb", "params", "p50_b1_ms", "spread_b1_pct",
                                                    "best_throughput_ips", "best_batch", "speedup_vs_eager")})
            metrics.update({clean_key(f"estimate_ms_{k}_b1"): v for k, v in numbers(r.get("estimate_ms") or {}).items()})
            metrics.update({clean_key(f"estimate_error_pct_{k}_b1"): v
                            for k, v in numbers(r.get("error_pct") or {}).items()})
            metrics.update(bench_metrics(by_pair.get((str(Path(r["artifact"])), r.get("backend")), [])))
            # One run per (file, runtime) pair the report ranks; the runtime named where a file has several.
            name = f"{model} {r['method']}" + (f" on {r.get('backend')}" if per_file[r["artifact"]] > 1 else "")
            art = artifact_record(r["artifact"], name, metrics)
            art.tags.update({**_base_tags("pipeline"), "fopt.model": model, "fopt.method": r["method"]})
            if r.get("backend"):
                art.tags["fopt.backend"] = str(r["backend"])
            if r.get("error"):
                art.tags["fopt.error"] = param_value(r["error"])
            if art.parent_sha256 is None and r.get("format") == "checkpoint":
                art.parent_key = train.name  # a checkpoint comes from its training run
            root.children.append(art)
    return root


def optimize_record(result: dict[str, Any], options: dict[str, Any]) -> RunRecord:
    """`fopt optimize`'s result: the FP32 input as the root, one child per produced artifact."""
    model = Path(result["model"])
    root = artifact_record(model, f"optimize {model.name}")
    root.kind = "optimize"
    root.params.update(flatten(result.get("options") or options, "optimize."))
    root.tags.update({**_base_tags("optimize"), "fopt.kind": "optimize"})
    parent = result.get("parent") or {}
    root.metrics.update(numbers({k: (parent.get("metrics") or {}).get(k) for k in ("accuracy", "macro_f1")}))
    if (v := number((parent.get("latency_b1_quick") or {}).get("p50_ms"))) is not None:
        root.metrics["quick_p50_b1_ms"] = v
    if result.get("dataset"):
        root.tags["fopt.dataset"] = str(result["dataset"])
    for a in result.get("artifacts", []):
        row = a.get("row") or {}
        card_metrics = (_card(a["path"]).get("metrics") or {})
        val = card_metrics.get("val") or {}
        metrics = numbers({"accuracy": val.get("accuracy"), "macro_f1": val.get("macro_f1"),
                           "d_accuracy_pts": row.get("d_accuracy_pts"),
                           "d_macro_f1_pts": row.get("d_macro_f1_pts"), "size_mb": row.get("size_mb"),
                           "params": row.get("params"), "quick_p50_b1_ms": row.get("latency_b1_ms"),
                           "quick_speedup_vs_parent": row.get("speedup"), "seconds": a.get("seconds")})
        child = artifact_record(a["path"], f"{model.stem} {a['method']}", metrics)
        child.tags.update({**_base_tags("optimize"), "fopt.method": str(a["method"])})
        if row.get("note"):
            child.tags["fopt.note"] = param_value(row["note"])
        root.children.append(child)
    return root


def bench_record(data: dict[str, Any], options: dict[str, Any]) -> RunRecord:
    """`fopt bench`'s result: the bench as the root (settings, machine, table), one child per artifact."""
    results = data.get("results", [])
    root = RunRecord(name="bench " + ", ".join(dict.fromkeys(Path(r["artifact"]).name for r in results)),
                     kind="bench", params=flatten({**options, "settings": data.get("settings") or {}}),
                     tags={**_base_tags("bench"), "fopt.kind": "bench", **machine_tags(data.get("machine"))},
                     texts={"bench.md": bench_table(results),
                            "bench.json": json.dumps(data, indent=2, default=str)})
    root.name = root.name[:240]
    pairs = _by_pair(results)
    files = [path for path, _ in pairs]
    for (path, backend), rows in pairs.items():
        name = f"bench {Path(path).name}" + (f" on {backend}" if files.count(path) > 1 else "")
        child = artifact_record(path, name, bench_metrics(rows))
        child.tags.update(_base_tags("bench"))
        child.tags["fopt.backend"] = str(rows[0].get("backend"))
        errors = [f"batch {r['batch_size']}: {r.get('error')}" for r in rows if r.get("status") != "ok"]
        if errors:
            child.tags["fopt.error"] = param_value("; ".join(errors))
        root.children.append(child)
    return root
