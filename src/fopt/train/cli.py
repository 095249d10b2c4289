"""`fopt train` and `fopt eval`: parse options, call one library function, print the result.

No torch import at module level: `fopt --help` stays light.
"""

from __future__ import annotations

import dataclasses

import click

from fopt.console import (
    console,
    note,
    csv_option,
    device_option,
    json_option,
    print_table,
    write_csv,
    write_json,
)
from fopt.describe.hints import hint_options
from fopt.errors import UsageError
from fopt.runtime.base import RUNTIMES
from fopt.track import track_options, tracked
from fopt.train.config import OPTIMIZERS, SCHEDULERS, TrainConfig

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)
             if f.default is not dataclasses.MISSING}
# CLI option name -> TrainConfig field, for the options that feed the config.
_CONFIG_OPTIONS = ("data", "model", "out", "epochs", "batch_size", "lr", "optimizer", "weight_decay",
                   "scheduler", "img_size", "augment", "dropout", "freeze_backbone", "pretrained",
                   "amp", "sync_bn", "precise_bn", "seed", "device", "workers", "val_split", "top_losses",
                   "experiments", "dist_timeout_s")


@click.command("train")
@track_options("train")
@click.option("--data", type=click.Path(file_okay=False), help="Dataset folder (from `fopt data`).")
@click.option("--model", help="Registry model name (see --list-models).")
@click.option("--out", type=click.Path(file_okay=False), help="Run folder to write (RUN_DIR).")
@click.option("--epochs", type=int, default=_DEFAULTS["epochs"], show_default=True)
@click.option("--batch-size", type=int, default=_DEFAULTS["batch_size"], show_default=True,
              help="Images per step per process; under torchrun the global batch is this x world size.")
@click.option("--lr", type=float, default=_DEFAULTS["lr"], show_default=True, help="Learning rate.")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=_DEFAULTS["optimizer"],
              show_default=True)
@click.option("--weight-decay", type=float, default=_DEFAULTS["weight_decay"], show_default=True)
@click.option("--scheduler", type=click.Choice(SCHEDULERS), default=_DEFAULTS["scheduler"],
              show_default=True, help="Per-epoch LR schedule; plateau watches val macro-F1.")
@click.option("--img-size", type=int, default=_DEFAULTS["img_size"], show_default=True,
              help="Square input side in px (the study used 256; use 32-64 for quick CPU runs).")
@click.option("--augment/--no-augment", default=_DEFAULTS["augment"], show_default=True,
              help="Random crop, flip and colour jitter on the training split.")
@click.option("--dropout", type=float, default=None,
              help="Classifier dropout (default: the torchvision model's own).")
@click.option("--freeze-backbone", is_flag=True, help="Train only the classifier head.")
@click.option("--pretrained", metavar="PATH|imagenet",
              help="Initial weights: a state-dict file, or torchvision's ImageNet weights from the "
                   "local torch hub cache (never downloaded; selects ImageNet normalisation).")
@click.option("--amp/--no-amp", default=None,
              help="Mixed precision with gradient scaling (default: on for CUDA, off on CPU).")
@click.option("--sync-bn", is_flag=True,
              help="SyncBatchNorm across torchrun processes (CUDA only).")
@click.option("--precise-bn", type=int, default=_DEFAULTS["precise_bn"], show_default=True,
              help="Training images (without augmentation) that recompute BatchNorm statistics before "
                   "each validation; 0 keeps the running averages.")
@click.option("--seed", type=int, default=_DEFAULTS["seed"], show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=_DEFAULTS["device"],
              show_default=True)
@click.option("--workers", type=int, default=_DEFAULTS["workers"], show_default=True,
              help="DataLoader worker processes per training process (0 = load inline).")
@click.option("--val-split", type=click.Choice(["val", "test"]), default=_DEFAULTS["val_split"],
              show_default=True, help="Split that selects the best epoch.")
@click.option("--top-losses", type=int, default=_DEFAULTS["top_losses"], show_default=True,
              help="Rows in top_losses.csv (0 skips the extra pass over the training split).")
@click.option("--experiments", type=click.Path(dir_okay=False), default=_DEFAULTS["experiments"],
              show_default=True, help="CSV that gets one row per finished run.")
@click.option("--dist-timeout", "dist_timeout_s", type=int, default=_DEFAULTS["dist_timeout_s"],
              show_default=True, help="Seconds a torchrun process waits for the others before failing.")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False),
              help="Continue the run in RUN_DIR from its last.pt (other training options must match).")
@click.option("--force", is_flag=True, help="Start over in an --out that already holds a run.")
@click.option("--list-models", is_flag=True, help="Print the model registry and exit.")
@click.option("--num-classes", type=int, default=None,
              help="With --list-models: count parameters for this many classes (default: --data's, else 1000).")
@json_option
@click.pass_context
def train(ctx: click.Context, resume_dir: str | None, force: bool, list_models: bool,
          num_classes: int | None, json_path: str | None, **options) -> None:
    """Train a registry model on a dataset folder.

    Writes into RUN_DIR: best.pt (best validation macro-F1), last.pt (resumable), history.csv,
    curves.png, report.json, classification_report.txt, confusion_matrix.png, top_losses.csv and
    config.json, and appends a row to the experiments CSV. Multi-GPU/multi-node: launch the same
    command with `torchrun --nproc-per-node N -m fopt train ...`.

    Example: fopt train --data data/synth --model tiny --img-size 64 --epochs 5 --out artifacts/runs/tiny
    """
    if list_models:
        _list_models(num_classes, options.get("data"))
        return
    from fopt.train.config import resume_config
    from fopt.train.engine import fit

    if resume_dir:
        if options.get("out") and options["out"] != resume_dir:
            raise UsageError("--resume RUN_DIR continues that run in place; drop --out")
        given = {k: v for k, v in options.items()
                 if ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE}
        cfg = resume_config(resume_dir, **given)
    else:
        missing = [f"--{k}" for k in ("data", "model", "out") if not options.get(k)]
        if missing:
            raise UsageError(f"missing {', '.join(missing)} (or pass --resume RUN_DIR, or --list-models)")
        cfg = TrainConfig(**{k: options[k] for k in _CONFIG_OPTIONS})
    if resume_dir and force:
        raise UsageError("--resume continues a run and --force starts it over: pass one")
    result = fit(cfg, resume=bool(resume_dir), force=force)
    tracked(result)
    if not result.is_main:
        return  # one summary per job, from rank 0
    rows = [{"split": name, "accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "n": m["n"]}
            for name, m in (("val", result.val), ("test", result.test)) if m is not None]
    print_table(rows, title=f"{cfg.model}: best epoch {result.best_epoch} of {cfg.epochs} "
                            f"({result.world_size} process(es))")
    console.print(f"run folder: {result.run_dir}", markup=False, soft_wrap=True)
    write_json(json_path, {"run_dir": str(result.run_dir), "best_epoch": result.best_epoch,
                           "val": result.val, "test": result.test, "history": result.history,
                           "files": {k: str(v) for k, v in result.files.items()}})


def _list_models(num_classes: int | None, data: str | None) -> None:
    from fopt.models import list_models

    if num_classes is None and data:
        from fopt.data.datasets import DatasetTable

        num_classes = len(DatasetTable.load(data).class_names)
    num_classes = num_classes or 1000
    print_table(list_models(num_classes), title=f"models (params at {num_classes} classes)",
                headers={"default_size": "default px", "imagenet": "ImageNet weights"})


@click.command("eval")
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.option("--data", required=True, type=click.Path(file_okay=False), help="Dataset folder.")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="val", show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--threads", type=int, default=None, help="Intra-op CPU threads for the runner.")
@click.option("--runtime", type=click.Choice(RUNTIMES), default=None,
              help="Runtime to run it on (default: the format's own; ONNX files also run on openvino).")
@device_option
@json_option
@csv_option
@hint_options
def eval_cmd(artifact: str, data: str, split: str, batch_size: int, threads: int | None, runtime: str | None,
             device: str, json_path: str | None, csv_path: str | None, hints) -> None:
    """Accuracy, macro-F1 and the per-class report of any artifact (checkpoint, TorchScript, ONNX,
    TensorRT engine) on a dataset split. The artifact's card says how to feed it; for a model fopt
    did not make, say it with --preset (or --mean/--std), --input-shape and --classes.

    JSON keys: accuracy, macro_f1, n, per_class (name -> precision, recall, f1, support).

    Example: fopt eval artifacts/runs/tiny/best.pt --data data/synth --split test --json eval.json
    """
    from fopt.describe.infer import describe_model
    from fopt.evaluation import INDEX_MAP_NOTE, evaluate_artifact

    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    card = describe_model(artifact, hints)
    result = evaluate_artifact(artifact, data, split=split, device=device, batch_size=batch_size,
                               threads=threads, show_progress=True, card=card, runtime=runtime)
    if result["class_map"] == "index":
        note(f"note: {INDEX_MAP_NOTE}")
    per_class = [{"class": name, **m} for name, m in result["per_class"].items()]
    print_table(per_class, ["class", "precision", "recall", "f1", "support"],
                title=f"{artifact} [{split}] per class")
    print_table([{"n": result["n"], "accuracy": result["accuracy"], "macro_f1": result["macro_f1"],
                  "runtime": result["runtime"], "backend": result["backend"],
                  "seconds": result["seconds"]}], title="summary")
    write_json(json_path, result)
    write_csv(csv_path, per_class, ["class", "precision", "recall", "f1", "support"])
