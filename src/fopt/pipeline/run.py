"""`fopt pipeline`: data -> train -> export -> optimize -> eval -> analyze -> bench -> report.

Layout of a run folder::
    RUN/stages.json                 the ledger (what ran, on which input hashes, with which options)
    RUN/data/raw, RUN/data/table    synthetic dataset and its table (when --data is not given)
    RUN/<model>/train/              best.pt, last.pt, history, curves, reports
    RUN/<model>/export/             best.onnx, best.torchscript.pt (+ cards)
    RUN/<model>/optimize/           INT8 / FP16 ONNX (+ TensorRT engines on a GPU), optimize.json
    RUN/<model>/eval.json           accuracy and macro-F1 of every artifact (validation split)
    RUN/<model>/analysis.json       params, MACs, FLOPs, receptive field, T4 estimates
    RUN/<model>/bench.json, plots/  measured latency beside the estimates
    RUN/<model>/summary.json        one row per artifact: what the report is built from
    RUN/report.md, report.json      the comparison across models, with the recommendation

Each stage is skipped when its outputs exist and its inputs (sha256) and options are unchanged;
``force`` redoes everything. Stages only call the library functions the single-stage commands
call, so a pipeline artifact is exactly what `fopt export` / `fopt optimize` would have made.

The run folder is fopt's (`fopt.workdir.OwnedFolder`): a non-empty folder fopt did not make is
refused, every path a stage writes is recorded in its ledger, and only recorded paths are ever
replaced (on --force, or when a resume redoes their stage); a user's file is never touched. One
pipeline at a time writes a run folder (`fopt.workdir.exclusive`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from fopt.analyze.roofline import plot_roofline
from fopt.analyze.run import analyze
from fopt.artifacts import deployed_bytes, image_spec, write_json_atomic
from fopt.bench.costmodel.cache import load_machine_calibration
from fopt.bench.costmodel.calibrate import calibrate
from fopt.bench.plots import plot_all
from fopt.bench.run import bench_artifacts
from fopt.data.build import build_dataset
from fopt.data.datasets import DatasetTable
from fopt.data.synth import synthesize
from fopt.describe.hints import ModelHints
from fopt.describe.infer import cards_for, describe_model, own_card
from fopt.errors import DataError, FoptError, UsageError, one_line
from fopt.evaluation import evaluate_artifact, paired_deltas
from fopt.export.foreign import torchscript_to_onnx
from fopt.export.run import export_checkpoint
from fopt.models import MODELS, folder_name
from fopt.optimize.calib import MIN_CALIB, validate_calib_size
from fopt.optimize.run import OptimizeOptions, optimize_onnx
from fopt.pipeline.report import SUMMARY_NAME, build_report, load_summaries
from fopt.pipeline.stages import Stage, StageLedger
from fopt.runtime import runtimes_for
from fopt.runtime.openvino import openvino_unavailable_reason
from fopt.train.config import TrainConfig
from fopt.train.engine import fit
from fopt.workdir import OwnedFolder, exclusive

# What the original study used to turn FLOPs into T4 latency: the T4's FP64 rate (wrong),
# applied to a "FLOPs" column that actually held MACs. Kept only to show the difference.
STUDY_T4_RATE = 253e9


@dataclass
class PipelineConfig:
    out: str = "artifacts/pipeline"      # run folder
    models: tuple[str, ...] = ("resnet18",)  # registry names; the study's four is one command
    data: str | None = None              # dataset table or raw dataset; None = synthetic
    synth_classes: int = 22              # synthetic dataset: DeepFashion's 22 large categories
    synth_per_class: int = 150           # images per class (split by garment, ~80/10/10)
    synth_size: int = 64                 # px of the generated images
    epochs: int = 8                      # training epochs per model (resnet18 at 64 px: ~85% val)
    img_size: int = 64                   # training/inference resolution (the study: 256)
    batch_size: int = 32                 # training batch (the study's)
    lr: float = 1e-3                     # Adam learning rate (the study's)
    workers: int = 2                     # DataLoader workers
    seed: int = 0                        # one seed for data generation and training
    methods: tuple[str, ...] | None = None  # optimize methods; None = all this machine supports
    search: bool = True                  # with int8-static: the per-layer precision search too
    calib_size: int | None = None        # static INT8 calibration images (train split); None =
                                         # 256, or every train image when 32..255 exist
    batch_sizes: tuple[int, ...] = (1, 8)  # bench batch sizes
    min_time_s: float = 0.5              # bench time budget per row and process (3 processes: 1.5 s)
    processes: int = 3                   # bench: fresh processes per (artifact, runtime), so one slow
                                         # or lucky process does not pick the recommendation
    threads: int | None = None           # intra-op threads for every backend (None = cores)
    device: str = "cpu"                  # where artifacts are benchmarked
    max_accuracy_drop: float = 1.0       # recommendation: allowed drop in points
    latency_budget_ms: float | None = None  # recommendation: optional batch-1 p50 limit
    hints: ModelHints | None = None      # what the user says about an ONNX model fopt did not make
    force: bool = False                  # redo every stage

    def validate(self) -> "PipelineConfig":
        if not self.models:
            raise UsageError("give at least one --model")
        for m in self.models:
            if Path(m).is_file():   # a model from elsewhere: its file and the hints must describe it
                card = describe_model(m, self.hints)
                if card["format"] not in ("onnx", "torchscript"):
                    raise UsageError(f"--model {m}: a {card['format']} file; the pipeline takes registry "
                                     f"names, ONNX and TorchScript files")
                image_spec(card, m)   # eval and static INT8 need its normalisation: say so now
            else:
                MODELS.get(m)  # unknown name -> UsageError with suggestions
        if len(set(self.models)) != len(self.models):
            raise UsageError("a --model was given twice")
        if self.epochs < 1 or self.img_size < 16 or self.batch_size < 1:
            raise UsageError("--epochs >= 1, --img-size >= 16 and --batch-size >= 1 are required")
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise UsageError(f"bench batch sizes must be >= 1, got {self.batch_sizes}")
        if self.max_accuracy_drop < 0:
            raise UsageError("--max-accuracy-drop must be >= 0")
        if self.data is not None and not Path(self.data).exists():
            raise UsageError(f"--data {self.data}: no such folder")
        validate_calib_size(self.calib_size)
        return self


Log = Callable[[str], None]


def _json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def supported_methods(device: str) -> tuple[str, ...]:
    """Every optimize method this machine can produce (TensorRT only with a GPU and tensorrt)."""
    import importlib.util

    methods = ["int8-static", "int8-dynamic", "fp16"]
    if device == "cuda" and importlib.util.find_spec("tensorrt") is not None:
        methods.append("tensorrt")
    if openvino_unavailable_reason() is None and importlib.util.find_spec("nncf") is not None:
        methods.append("openvino")
    return tuple(methods)


Pair = tuple[Path, "str | None"]   # (artifact, runtime); None = its format's own runtime


def card_of(path: Path, hints: ModelHints | None = None) -> dict[str, Any]:
    """What a pipeline row knows about an artifact: its own card, or a foreign file's as `hints`
    describe it ({} if neither)."""
    try:
        return own_card(path) or describe_model(path, hints)
    except FoptError:
        return {}


def runtime_pairs(artifacts: list[Path], device: str, hints: ModelHints | None = None) -> list[Pair]:
    """What the eval and bench stages measure: every artifact on its format's runtime, and every
    ONNX artifact also on OpenVINO where OpenVINO runs (on the CPU)."""
    also = ["openvino"] if device == "cpu" and openvino_unavailable_reason() is None else []
    pairs: list[Pair] = []
    for p in artifacts:
        pairs.append((p, None))
        fmt = card_of(p, hints).get("format")
        pairs += [(p, rt) for rt in also if fmt and rt in runtimes_for(fmt)[1:]]
    return pairs


def pair_key(path: Path | str, runtime: str | None) -> str:
    """The key of a pair's results in eval.json: the path, plus the runtime when not the default."""
    return str(path) if runtime is None else f"{path}::{runtime}"


# ----------------------------------------------------------------------------- stages

def stage_data(cfg: PipelineConfig, run: Path, ledger: StageLedger, log: Log,
               owned: OwnedFolder) -> Path:
    table = run / "data" / "table"
    if cfg.data is not None and (Path(cfg.data) / "dataset.csv").exists():
        return Path(cfg.data)                      # already a dataset table
    preview = run / "data" / "preview.png"
    if cfg.data is not None:
        raw = Path(cfg.data)

        def make() -> None:
            # a redo replaces the table fopt wrote here (and nothing else); never the user's
            build_dataset(raw, table, seed=cfg.seed, force=owned.replaceable(table))
            owned.record(table)
        params = {"raw": str(raw.resolve())}
    else:
        raw = run / "data" / "raw"

        def make() -> None:
            mine = owned.replaceable(raw)
            owned.replaceable(preview)
            synthesize(raw, classes=cfg.synth_classes, per_class=cfg.synth_per_class,
                       size=cfg.synth_size, seed=cfg.seed, force=cfg.force and mine, preview=preview)
            owned.record(raw, preview)
            build_dataset(raw, table, seed=cfg.seed, force=owned.replaceable(table))
            owned.record(table)
        params = {"classes": cfg.synth_classes, "per_class": cfg.synth_per_class,
                  "size": cfg.synth_size, "seed": cfg.seed}
    status, _ = ledger.run(Stage("data", make, outputs=[table / "dataset.csv", table / "mapping.json"],
                                 params=params), force=cfg.force)
    log(f"[data] {status}: {table}")
    return table


def check_calibration(cfg: PipelineConfig, table: Path) -> None:
    """Static INT8 needs calibration images from the train split: check before anything trains.
    Like `fopt optimize`, no --calib-size takes 256, or every train image when 32..255 exist."""
    methods = tuple(cfg.methods or supported_methods(cfg.device))
    if not any(m.startswith("int8-static") or m in ("tensorrt", "openvino") for m in methods):
        return
    available = len(DatasetTable.load(table).split("train"))
    if available < MIN_CALIB:
        raise DataError(f"the train split of {table} has {available} image(s); static INT8 "
                        f"calibration needs at least {MIN_CALIB} (add data, or leave out int8-static "
                        f"with --method)")
    if cfg.calib_size is not None and cfg.calib_size > available:
        raise DataError(f"--calib-size {cfg.calib_size} but the train split of {table} has only "
                        f"{available} image(s); pass --calib-size {available} or leave it out "
                        f"(all of them are then used)")


def stage_train(cfg: PipelineConfig, model: str, table: Path, mdir: Path, ledger: StageLedger,
                log: Log, owned: OwnedFolder) -> dict[str, Any]:
    tdir = mdir / "train"
    out = mdir / "train.json"
    tcfg = TrainConfig(data=str(table), model=model, out=str(tdir), epochs=cfg.epochs,
                       batch_size=cfg.batch_size, lr=cfg.lr, img_size=cfg.img_size, seed=cfg.seed,
                       workers=cfg.workers, device="auto" if cfg.device == "cuda" else "cpu",
                       experiments=str(mdir.parent / "experiments.csv"))

    def make() -> None:
        # A changed input means a new run, not a resume: start over in the folder fopt wrote.
        mine = owned.replaceable(tdir)
        owned.record(tdir, out)
        res = fit(tcfg.validate(), force=mine)
        write_json_atomic(out, {
            "checkpoint": str(res.files.get("best.pt", tdir / "best.pt")), "best_epoch": res.best_epoch,
            "accuracy": res.val.get("accuracy"), "macro_f1": res.val.get("macro_f1"),
            "val_n": res.val.get("n"), "epochs": cfg.epochs, "img_size": cfg.img_size,
            "files": {k: str(v) for k, v in res.files.items()}})

    status, _ = ledger.run(Stage(f"{model}/train", make, inputs=[table / "dataset.csv"],
                                 outputs=[tdir / "best.pt", out], params=asdict(tcfg)), force=cfg.force)
    info = _json(out)
    log(f"[{model}] train {status}: val accuracy {100 * info['accuracy']:.1f}%, "
        f"macro-F1 {100 * info['macro_f1']:.1f}% (best epoch {info['best_epoch']})")
    return info


def stage_export(cfg: PipelineConfig, model: str, ckpt: Path, mdir: Path, ledger: StageLedger,
                 log: Log) -> dict[str, Path]:
    edir = mdir / "export"
    targets = {"onnx": edir / f"{ckpt.stem}.onnx", "torchscript": edir / f"{ckpt.stem}.torchscript.pt"}

    def make() -> None:
        export_checkpoint(ckpt, formats=("onnx", "torchscript"), out_dir=edir, force=True)

    status, _ = ledger.run(Stage(f"{model}/export", make, inputs=[ckpt], outputs=list(targets.values()),
                                 params={"formats": sorted(targets)}), force=cfg.force)
    log(f"[{model}] export {status}: {', '.join(p.name for p in targets.values())}")
    return targets


def stage_export_foreign(cfg: PipelineConfig, model: str, source: Path, mdir: Path, ledger: StageLedger,
                         log: Log) -> Path:
    """The ONNX file the later stages start from: the user's own, or its TorchScript file exported."""
    card = describe_model(source, cfg.hints)
    if card["format"] == "onnx":
        return source
    out = mdir / "export" / f"{source.stem}.onnx"

    def make() -> None:
        torchscript_to_onnx(source, out, card, force=True, log=lambda m: log(f"[{model}] {m}"))

    status, _ = ledger.run(Stage(f"{model}/export", make, inputs=[source], outputs=[out],
                                 params={"hints": cfg.hints.to_dict() if cfg.hints else None}), force=cfg.force)
    log(f"[{model}] export {status}: {out.name}")
    return out


def stage_optimize(cfg: PipelineConfig, model: str, onnx_path: Path, table: Path, mdir: Path,
                   ledger: StageLedger, log: Log, hints: ModelHints | None = None) -> list[Path]:
    odir = mdir / "optimize"
    out = odir / "optimize.json"
    methods = tuple(cfg.methods or supported_methods(cfg.device))
    # Evaluation and timing happen once, in the eval and bench stages, for every artifact alike.
    opts = OptimizeOptions(methods=methods, out_dir=str(odir), evaluate=False, latency=False,
                           force=True, calib_data=str(table), calib_size=cfg.calib_size,
                           seed=cfg.seed, threads=cfg.threads, hints=hints,
                           search=cfg.search and "int8-static" in methods)

    def make() -> None:
        res = optimize_onnx(onnx_path, opts, log=lambda m: log(f"[{model}] {m}"))
        write_json_atomic(out, res)

    status, _ = ledger.run(Stage(f"{model}/optimize", make, inputs=[onnx_path], outputs=[out],
                                 params={"methods": list(methods), "calib_size": cfg.calib_size,
                                         "search": opts.searching,
                                         "hints": hints.to_dict() if hints else None}),
                           force=cfg.force)
    paths = [Path(a["path"]) for a in _json(out)["artifacts"]]
    log(f"[{model}] optimize {status}: {', '.join(p.name for p in paths)}")
    return paths


def _method(path: Path, card: dict[str, Any]) -> str:
    fmt = card["format"]
    if fmt == "checkpoint":
        return "torch eager fp32"
    if fmt == "torchscript":
        return "torchscript fp32"
    opt = card.get("optimize") or {}
    method = opt.get("method") if isinstance(opt, dict) else None
    if fmt == "tensorrt":
        return f"tensorrt {card['precision']}"
    return method or f"onnx {card['precision']}"


def stage_eval(cfg: PipelineConfig, model: str, pairs: list[Pair], table: Path, mdir: Path,
               ledger: StageLedger, log: Log) -> dict[str, Any]:
    out = mdir / "eval.json"
    artifacts = list(dict.fromkeys(p for p, _ in pairs))
    cards = cards_for(artifacts, cfg.hints, foreign_only=True)   # fed as the hints say: models fopt did not make

    def make() -> None:
        results = {}
        for p, rt in pairs:
            card = cards.get(str(p)) or card_of(p)
            device = "cuda" if card.get("format") == "tensorrt" else "cpu"
            key = pair_key(p, rt)
            try:
                m = evaluate_artifact(p, table, split="val", device=device, threads=cfg.threads, runtime=rt,
                                      card=cards.get(str(p)))
                results[key] = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "n": m["n"],
                                "runtime": m.get("runtime"),
                                # per image, for the paired 95% interval of each delta
                                "labels": m["labels"], "predictions": m["predictions"]}
            except Exception as e:  # recorded in the row, not swallowed: the report shows it
                results[key] = {"error": one_line(e)}
            shown = {k: v for k, v in results[key].items() if k not in ("labels", "predictions")}
            log(f"[{model}] eval {p.name}{f' on {rt}' if rt else ''}: {shown}")
        write_json_atomic(out, results)

    status, _ = ledger.run(Stage(f"{model}/eval", make, inputs=[*artifacts, table / "dataset.csv"],
                                 outputs=[out], params={"split": "val",
                                                        "pairs": [pair_key(p, rt) for p, rt in pairs],
                                                        "hints": cfg.hints.to_dict() if cfg.hints else None}),
                           force=cfg.force)
    log(f"[{model}] eval {status}")
    return _json(out)


def stage_analyze(cfg: PipelineConfig, model: str, onnx_path: Path, mdir: Path, ledger: StageLedger,
                  log: Log) -> dict[str, Any]:
    out = mdir / "analysis.json"

    def make() -> None:
        a = analyze(onnx_path, batch=1, device_spec="t4")
        d = a.to_dict()
        d.pop("layers", None)
        d["t4"] = {"naive_ms": d["estimate_ms"]["naive"], "roofline_ms": d["estimate_ms"]["roofline"],
                   "study_fp64_ms": a.macs / STUDY_T4_RATE * 1e3}
        (mdir / "plots").mkdir(exist_ok=True)
        plot_roofline(a.estimate, a.device, mdir / "plots" / "roofline_t4.png",
                      title=f"{model} FP32 on the T4 roofline (estimate, not measured)")
        d["roofline_plot"] = str(mdir / "plots" / "roofline_t4.png")
        write_json_atomic(out, d)

    status, _ = ledger.run(Stage(f"{model}/analyze", make, inputs=[onnx_path], outputs=[out],
                                 params={"device_spec": "t4", "batch": 1}), force=cfg.force)
    d = _json(out)
    log(f"[{model}] analyze {status}: {d['params'] / 1e6:.2f} M params, {d['macs'] / 1e9:.3f} G MACs, "
        f"{d['flops'] / 1e9:.3f} G FLOPs, T4 naive {d['t4']['naive_ms']:.3g} ms / roofline "
        f"{d['t4']['roofline_ms']:.3g} ms")
    return d


def stage_calibrate(cfg: PipelineConfig, log: Log) -> None:
    if cfg.force or load_machine_calibration(cfg.device, cfg.threads) is None:
        log(f"[calibrate] measuring this machine's {cfg.device} rates (cached for later runs)")
        calibrate(cfg.device, cfg.threads, on_step=lambda s: log(f"[calibrate] {s}"))
    else:
        log("[calibrate] skipped: a calibration for this machine is cached")


def stage_bench(cfg: PipelineConfig, model: str, pairs: list[Pair], mdir: Path,
                ledger: StageLedger, log: Log) -> dict[str, Any]:
    out = mdir / "bench.json"
    artifacts = list(dict.fromkeys(p for p, _ in pairs))

    def make() -> None:
        res = bench_artifacts([(str(p), rt) for p, rt in pairs], device=cfg.device, batch_sizes=cfg.batch_sizes,
                              threads=cfg.threads, min_time_s=cfg.min_time_s,
                              processes=cfg.processes, estimate=True, hints=cfg.hints,
                              hints_foreign_only=True,
                              on_progress=lambda m: log(f"[{model}] bench {m}"))
        d = res.to_dict()
        if d["settings"].get("busy_warning"):
            log(f"[{model}] warning: {d['settings']['busy_warning']}")
        d["plots"] = [str(p) for p in plot_all(d, mdir / "plots")]
        write_json_atomic(out, d)

    params = {"batch_sizes": list(cfg.batch_sizes), "min_time_s": cfg.min_time_s,
              "processes": cfg.processes, "threads": cfg.threads, "device": cfg.device,
              "pairs": [pair_key(p, rt) for p, rt in pairs],
              "hints": cfg.hints.to_dict() if cfg.hints else None}
    status, _ = ledger.run(Stage(f"{model}/bench", make, inputs=artifacts, outputs=[out], params=params),
                           force=cfg.force)
    log(f"[{model}] bench {status}")
    return _json(out)


# ----------------------------------------------------------------------------- summary

def model_rows(model: str, pairs: list[Pair], evals: dict[str, Any], bench: dict[str, Any],
               analysis: dict[str, Any], hints: ModelHints | None = None) -> list[dict[str, Any]]:
    """One report row per (artifact, runtime) pair, every number copied from the eval, bench and
    card files."""
    by_art: dict[tuple[str, str | None], list[dict[str, Any]]] = {}
    for r in bench.get("results", []):
        by_art.setdefault((str(Path(r["artifact"])), r.get("runtime")), []).append(r)
    rows = []
    ref = evals.get(pair_key(*pairs[0]), {})  # the checkpoint (or the user's ONNX): the FP32 reference
    eager_p50 = None
    for p, rt in pairs:
        card = card_of(p, hints)
        runtime = rt or (runtimes_for(card["format"])[0] if card.get("format") else None)
        ev = evals.get(pair_key(p, rt), {})
        brs = sorted(by_art.get((str(p), runtime), []), key=lambda r: r["batch_size"])
        ok = [r for r in brs if r.get("status") == "ok"]
        b1 = next((r for r in ok if r["batch_size"] == 1), None)
        best = max(ok, key=lambda r: r.get("throughput_ips") or 0, default=None)
        errors = [f"batch {r['batch_size']}: {r.get('error')}" for r in brs if r.get("status") != "ok"]
        if ev.get("error"):
            errors.append(f"eval: {ev['error']}")
        row = {
            "model": model, "artifact": str(p), "method": _method(p, card), "runtime": runtime,
            "format": card.get("format"), "precision": card.get("precision"),
            "backend": b1.get("backend") if b1 else (brs[0].get("backend") if brs else None),
            "size_mb": deployed_bytes(p) / 1e6 if p.exists() else None,
            "params": analysis.get("params"),
            "accuracy": ev.get("accuracy"), "macro_f1": ev.get("macro_f1"),
            "d_accuracy_pts": _pts(ev.get("accuracy"), ref.get("accuracy")),
            "d_macro_f1_pts": _pts(ev.get("macro_f1"), ref.get("macro_f1")),
            "eval_n": ev.get("n"),
            **{f"d_{k}_ci_pts": v for k, v in paired_deltas(ref, ev).items()},
            "p50_b1_ms": (b1 or {}).get("latency_ms", {}).get("p50") if b1 else None,
            "spread_b1_pct": (b1 or {}).get("spread_pct"),
            "best_throughput_ips": best.get("throughput_ips") if best else None,
            "best_batch": best.get("batch_size") if best else None,
            "estimate_ms": (b1 or {}).get("estimate_ms") or {},
            "estimate_band_ms": (b1 or {}).get("estimate_band_ms") or {},
            "error_pct": (b1 or {}).get("error_pct") or {},
            "error": "; ".join(errors) or None,
        }
        if card.get("format") == "checkpoint":
            eager_p50 = row["p50_b1_ms"]
        rows.append(row)
    for row in rows:
        row["speedup_vs_eager"] = (eager_p50 / row["p50_b1_ms"]
                                   if eager_p50 and row["p50_b1_ms"] else None)
    return rows


def _pts(value: float | None, ref: float | None) -> float | None:
    if value is None or ref is None:
        return None
    return round(100.0 * (value - ref), 4)


# ----------------------------------------------------------------------------- the whole job

def run_pipeline(cfg: PipelineConfig, log: Log = print) -> dict[str, Any]:
    cfg.validate()
    run = Path(cfg.out).resolve()  # absolute paths in summaries: `fopt report` works from anywhere
    # the lock first: a second pipeline on this folder is refused before it looks at anything
    with exclusive(run, what=f"run folder {run}", folder=True):
        owned = OwnedFolder.claim(run, what="pipeline run folder")  # refuses a folder of the user's
        return _run_pipeline(cfg, run, owned, log)


def _run_pipeline(cfg: PipelineConfig, run: Path, owned: OwnedFolder, log: Log) -> dict[str, Any]:
    owned.replaceable(run / "stages.json")
    owned.record(run / "stages.json")
    ledger = StageLedger(run / "stages.json")
    table = stage_data(cfg, run, ledger, log, owned)

    DatasetTable.load(table)  # fail early on a bad table
    check_calibration(cfg, table)  # before any training: an INT8 stage that cannot run fails now
    for name in ("report.md", "report.json", "accuracy_vs_latency.png", "experiments.csv"):
        owned.replaceable(run / name)
        owned.record(run / name)
    calibrated = False
    summaries = []
    for entry in cfg.models:
        foreign = Path(entry).resolve() if Path(entry).is_file() else None
        model = foreign.name if foreign else entry
        mdir = run / folder_name(model)
        if not owned.replaceable(mdir):
            mdir.mkdir()
            owned.record(mdir)                # the model folder and everything its stages write
        if foreign is None:
            train = stage_train(cfg, model, table, mdir, ledger, log, owned)
            ckpt = Path(train["checkpoint"])
            exported = stage_export(cfg, model, ckpt, mdir, ledger, log)
            onnx_path, first = exported["onnx"], [ckpt, exported["torchscript"], exported["onnx"]]
        else:   # from the export stage on: the user's file is the FP32 reference, never written to
            log(f"[{model}] {foreign}: not made by fopt; its card comes from the file and the options")
            train, onnx_path = {}, stage_export_foreign(cfg, model, foreign, mdir, ledger, log)
            first = [foreign] if onnx_path == foreign else [foreign, onnx_path]
        optimized = stage_optimize(cfg, model, onnx_path, table, mdir, ledger, log,
                                   hints=cfg.hints if foreign else None)
        pairs = runtime_pairs([*first, *optimized], cfg.device, cfg.hints)
        evals = stage_eval(cfg, model, pairs, table, mdir, ledger, log)
        analysis = stage_analyze(cfg, model, onnx_path, mdir, ledger, log)
        if not calibrated:
            stage_calibrate(cfg, log)
            calibrated = True
        bench = stage_bench(cfg, model, pairs, mdir, ledger, log)
        files = train.get("files", {})
        plots = {"curves": files.get("curves.png"), "confusion_matrix": files.get("confusion_matrix.png"),
                 "roofline": analysis.get("roofline_plot")}
        for p in bench.get("plots", []):
            name = Path(p).name
            if name.startswith("measured_vs_estimated"):
                plots["measured_vs_estimated"] = p
            elif name.startswith("latency_vs_batch"):
                plots["latency_vs_batch"] = p
        summary = {
            "model": model, "dataset": str(table), "machine": bench.get("machine"),
            "foreign": describe_model(foreign, cfg.hints)["foreign"] if foreign else None,
            "train": train, "analysis": analysis, "plots": plots,
            "bench_settings": {**(bench.get("settings") or {}), "batch_sizes": list(cfg.batch_sizes),
                               "min_time_s": cfg.min_time_s, "processes": cfg.processes},
            "rows": model_rows(model, pairs, evals, bench, analysis, cfg.hints),
        }
        write_json_atomic(mdir / SUMMARY_NAME, summary)
        summaries.append(mdir / SUMMARY_NAME)
    report = build_report(load_summaries(summaries), run, max_accuracy_drop=cfg.max_accuracy_drop,
                          latency_budget_ms=cfg.latency_budget_ms)
    log(f"report: {run / 'report.md'} (and report.json)")
    return report
