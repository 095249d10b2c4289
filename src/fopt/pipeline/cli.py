"""`fopt pipeline` and `fopt report`."""

from __future__ import annotations

import click

from fopt.console import device_option, force_option
from fopt.describe.hints import hint_options
from fopt.track import track_options


def _int_list(ctx, param, value: str) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not out or any(v < 1 for v in out):
        raise click.BadParameter("batch sizes must be integers >= 1")
    return out


@click.command("pipeline")
@track_options("pipeline")
@click.option("--model", "models", multiple=True, default=("resnet18",), show_default=True,
              help="Registry model (also timm:NAME, torchvision:NAME) or an ONNX file fopt did not make "
                   "(from the optimize stage on; describe it with --preset/--classes); repeat for "
                   "several (e.g. the study's vgg16, resnet50, efficientnet_b0, efficientnet_b7).")
@click.option("--data", type=click.Path(file_okay=False),
              help="Dataset table (from `fopt data build`) or raw dataset; default: synthetic.")
@click.option("--out", default="artifacts/pipeline", show_default=True, type=click.Path(file_okay=False),
              help="Run folder.")
@click.option("--epochs", default=8, show_default=True, type=int)
@click.option("--img-size", default=64, show_default=True, type=int, help="Training and inference size (px).")
@click.option("--batch-size", default=32, show_default=True, type=int, help="Training batch size.")
@click.option("--lr", default=1e-3, show_default=True, type=float)
@click.option("--workers", default=2, show_default=True, type=int, help="DataLoader workers.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--synth-per-class", default=150, show_default=True, type=int,
              help="Synthetic images per class (when --data is not given).")
@click.option("--method", "methods", multiple=True,
              type=click.Choice(["int8-static", "int8-dynamic", "fp16", "tensorrt", "openvino"]),
              help="Optimize methods (repeatable); default: every one this machine supports.")
@click.option("--search/--no-search", default=True, show_default=True,
              help="With int8-static: also the per-layer precision search (`fopt optimize --search`), "
                   "whose mixed INT8 graph is benchmarked like every artifact.")
@click.option("--calib-size", default=None, type=int,
              help="Static INT8 calibration images from the train split (default: 256, or every "
                   "train image when 32-255 exist, as `fopt optimize`; checked before training).")
@click.option("--batch-sizes", default="1,8", show_default=True, callback=_int_list,
              help="Bench batch sizes.")
@click.option("--min-time", "min_time_s", default=0.5, show_default=True, type=float,
              help="Bench time budget per row and process (s); the processes' samples are pooled.")
@click.option("--processes", default=3, show_default=True, type=int,
              help="Bench every (artifact, runtime) in this many fresh processes and record the spread; "
                   "the recommendation ranks their pooled p50.")
@click.option("--threads", type=int, help="Intra-op threads for every backend (default: cores).")
@device_option
@click.option("--max-accuracy-drop", default=1.0, show_default=True, type=float,
              help="Recommendation: allowed accuracy and macro-F1 drop (points) vs FP32.")
@click.option("--latency-budget", "latency_budget_ms", type=float,
              help="Recommendation: batch-1 p50 limit (ms).")
@force_option
@hint_options(only=("input_shape", "mean", "std", "preset", "classes"))
def pipeline(models, data, out, epochs, img_size, batch_size, lr, workers, seed, synth_per_class,
             methods, search, calib_size, batch_sizes, min_time_s, processes, threads, device,
             max_accuracy_drop, latency_budget_ms, force, hints):
    """Run data, train, export, optimize, eval, analyze and bench; write report.md/report.json.

    Re-running skips every stage whose outputs exist and whose inputs and options are unchanged
    (--force redoes them, replacing only what fopt wrote in the run folder; a folder fopt did not
    make is refused, and one pipeline at a time writes a run folder). The report recommends the
    fastest artifact whose accuracy and macro-F1 drop stays within --max-accuracy-drop.

    Example: fopt pipeline --model resnet18 --model mobilenet_v3_large --out artifacts/cmp
    Example: fopt pipeline --model their.onnx --preset imagenet --data data/ds --out artifacts/theirs
    """
    from fopt.pipeline.run import PipelineConfig, run_pipeline
    from fopt.runtime import resolve_device

    cfg = PipelineConfig(out=out, models=tuple(models), data=data, synth_per_class=synth_per_class,
                         epochs=epochs, img_size=img_size, batch_size=batch_size, lr=lr,
                         workers=workers, seed=seed, methods=tuple(methods) or None, search=search,
                         calib_size=calib_size, batch_sizes=batch_sizes, min_time_s=min_time_s,
                         processes=processes, threads=threads, device=resolve_device(device),
                         max_accuracy_drop=max_accuracy_drop, latency_budget_ms=latency_budget_ms,
                         force=force, hints=None if hints.empty else hints)
    report = run_pipeline(cfg, log=lambda m: click.echo(m, err=True))
    _print_summary(report)
    click.echo(f"report: {out}/report.md")


@click.command("report")
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option("--out", type=click.Path(file_okay=False),
              help="Where to write report.md/report.json (default: the first run folder).")
@click.option("--max-accuracy-drop", default=1.0, show_default=True, type=float)
@click.option("--latency-budget", "latency_budget_ms", type=float)
def report(runs, out, max_accuracy_drop, latency_budget_ms):
    """Rebuild the comparison report from existing `fopt pipeline` runs (compare runs and models).

    Example: fopt report artifacts/run-a artifacts/run-b --out artifacts/compare
    """
    from fopt.pipeline.report import build_report, find_summaries, load_summaries

    sums = load_summaries(find_summaries(runs))
    dest = out or runs[0]
    rep = build_report(sums, dest, max_accuracy_drop=max_accuracy_drop,
                       latency_budget_ms=latency_budget_ms)
    _print_summary(rep)
    click.echo(f"report: {dest}/report.md")


def _print_summary(report: dict) -> None:
    from fopt.console import print_table

    def pct(v):
        return None if v is None else f"{100 * v:.1f}"

    rows = [{"model": r["model"], "artifact": r["method"], "runtime": r.get("runtime"),
             "MB": None if r.get("size_mb") is None else f"{r['size_mb']:.2f}",
             "acc %": pct(r.get("accuracy")),
             "Δacc": None if r.get("d_accuracy_pts") is None else f"{r['d_accuracy_pts']:+.1f}",
             "F1 %": pct(r.get("macro_f1")),
             "p50 b1 ms": None if r.get("p50_b1_ms") is None else f"{r['p50_b1_ms']:.3g}",
             "vs eager": None if r.get("speedup_vs_eager") is None else f"{r['speedup_vs_eager']:.2f}x",
             "est. ms (calibrated)": (r.get("estimate_ms") or {}).get("calibrated")}
            for r in report["rows"]]
    print_table(rows, title="fopt pipeline: every artifact (validation split, batch-1 latency)")
    rec = report["recommendation"]
    click.echo(("recommendation: " + rec["why"]) if rec.get("artifact") else rec["why"])
