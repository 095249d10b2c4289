"""`fopt bench`: measured latency beside the naive, roofline and calibrated estimates."""

from __future__ import annotations

import click

from fopt.console import csv_option, json_option
from fopt.describe.hints import hint_options
from fopt.runtime.base import RUNTIMES
from fopt.track import track_options, tracked


def _batch_sizes(ctx, param, value: str) -> list[int]:
    try:
        sizes = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers like 1,8,32, got {value!r}") from None
    if not sizes or any(s < 1 for s in sizes):
        raise click.BadParameter(f"batch sizes must be >= 1, got {value!r}")
    return sizes


@click.command("bench")
@track_options("bench")
@click.argument("artifacts", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu", show_default=True,
              help="Where to run (and which calibration to use).")
@click.option("--batch-sizes", default="1,8", show_default=True, callback=_batch_sizes,
              help="Comma-separated batch sizes; one row per artifact and size.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Intra-op threads for every backend (default: the physical cores available).")
@click.option("--min-time", "min_time_s", type=click.FloatRange(min=0.001), default=1.0, show_default=True,
              help="Seconds of timing per row; stops earlier once the median is stable.")
@click.option("--processes", type=click.IntRange(min=1), default=1, show_default=True,
              help="Measure in K fresh processes and report the spread between them.")
@click.option("--clock", type=click.Choice(["wall", "thread-cpu"]), default="wall", show_default=True,
              help="thread-cpu: CPU time of the one measuring thread (needs --threads 1); "
                   "ignores time other processes take on a shared machine.")
@click.option("--runtime", type=click.Choice(RUNTIMES), default=None,
              help="Run every artifact on this runtime (default: each format's own; ONNX files also run "
                   "on openvino).")
@click.option("--per-layer", is_flag=True, help="Profile each row and show time per layer beside its estimate.")
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True,
              help="Layers shown per row with --per-layer.")
@click.option("--estimate/--no-estimate", default=True, show_default=True,
              help="Put the naive, roofline and calibrated estimates beside each row.")
@click.option("--calibrate", "do_calibrate", is_flag=True,
              help="Measure this machine first (55-100 s on a 2-core VM) and cache the result.")
@click.option("--quick-calibration", is_flag=True, hidden=True, help="Reduced probe set (tests).")
@click.option("--show-calibration", is_flag=True, help="Print this machine's cached calibration.")
@json_option
@csv_option
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False),
              help="Write measured-vs-estimated, latency-vs-batch and per-layer plots here.")
@hint_options
def bench(artifacts, device, batch_sizes, threads, min_time_s, processes, clock, runtime, per_layer, top, estimate,
          do_calibrate, quick_calibration, show_calibration, json_path, csv_path, plot_dir, hints):
    """Measure latency and throughput of artifacts beside their estimated latency.

    ARTIFACT is any fopt artifact: a checkpoint (torch eager), TorchScript, ONNX (FP32, FP16,
    INT8) or a TensorRT engine. Every backend gets the same input and the same number of
    threads. Each row shows p50/p90/p99, throughput, and the naive (FLOPs/peak), roofline and
    calibrated estimates with their error against the measured p50. The calibrated estimate
    needs `fopt bench --calibrate` once per machine (cached under ~/.cache/fopt/calibration,
    or $FOPT_CACHE_DIR).

    Any other ONNX or TorchScript file is timed as well: it needs only a static input shape
    (--input-shape 1x3x224x224 where its file leaves dims dynamic; --dtype for non-float inputs).

    Example: fopt bench run/model.onnx run/model.int8.onnx run/best.pt --batch-sizes 1,8 --plot out/
    """
    from fopt.errors import FoptError, UsageError

    if not artifacts and not (do_calibrate or show_calibration):
        raise UsageError("give artifacts to benchmark, or --calibrate / --show-calibration")
    from fopt.bench import report
    from fopt.console import note, print_table

    if do_calibrate:
        from fopt.bench.costmodel.calibrate import calibrate

        cal = calibrate(device, threads, quick=quick_calibration, clock=clock,
                        on_step=lambda m: note(f"calibrating: {m}"))
        note(f"calibration took {cal['duration_s']:.0f} s; cached in {cal.get('path')}")
        stab = cal.get("stability") or {}
        if stab and not stab.get("stable", True):
            from fopt.console import warn

            warn(f"the GEMM rate changed {stab['gemm_change_pct']:.0f}% between the start and the end of the "
                 f"calibration: something else was using the CPU; estimates from it are unreliable, "
                 f"run `fopt bench --calibrate` again on a quiet machine")
        show_calibration = True
    if show_calibration:
        from fopt.bench.costmodel.cache import require_machine_calibration
        from fopt.bench.costmodel.calibrate import calibration_rows
        from fopt.runtime import resolve_device

        dev = resolve_device(device)
        cal = require_machine_calibration(dev, threads if dev == "cpu" else None, clock)
        summary, classes = calibration_rows(cal)
        print_table(summary, title=f"calibration of {cal['machine']['cpu'].get('model')} "
                                   f"({cal.get('threads')} threads, {cal.get('created')}): {cal.get('path')}")
        if classes:
            print_table(classes, title="per kernel class: linear fit (rate, overhead) and the range of rates its "
                                       "probe layers reached (convolutions and GEMMs are estimated from the "
                                       "most similar of those)")
    if not artifacts:
        return
    from fopt.bench.run import bench_artifacts

    result = bench_artifacts(list(artifacts), device=device, batch_sizes=batch_sizes, threads=threads,
                             min_time_s=min_time_s, processes=processes, estimate=estimate, clock=clock,
                             per_layer=per_layer, runtime=runtime, hints=hints, on_progress=lambda m: note(m))
    data = result.to_dict()
    tracked(data)
    report.print_result(data, top=top)
    if data["settings"].get("busy_warning"):
        from fopt.console import warn

        warn(data["settings"]["busy_warning"])
    report.write_outputs(data, json_path=json_path, csv_path=csv_path)
    if plot_dir:
        from fopt.bench.plots import plot_all

        for p in plot_all(data, plot_dir):
            note(f"wrote {p}")
    if len(result.failed) == len(result.results):
        raise FoptError(f"every row failed; first error: {result.results[0].error}")
