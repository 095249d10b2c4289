"""`bench_artifacts`: measure artifacts x batch sizes, put the estimates beside, one row each.

Rows are measured first (artifact by artifact, every batch size on one loaded runner, same input
and threads for all; `fopt.bench.measure.harness`), then estimated (`fopt.bench.estimates`), so
estimation work (analysis, a short profiled run) never overlaps timing. A row that fails
(unloadable artifact, unsupported batch size, backend error) is recorded with
``status: "error"`` and its message; the run goes on.

With ``processes=K > 1`` each artifact is measured in K fresh Python processes, in K rounds over
all artifacts (so the processes of one artifact are spread over the run), and the row pools
their samples (`fopt.runtime.timing.combine`): ``process_p50_ms`` lists each process's median
and ``spread_pct`` their ``max/min - 1``. On shared virtual machines the spread between
processes is often far larger than within one (README, "Measuring honestly").
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from fopt.bench.estimates import calibration_for, calibration_info, estimate_rows
from fopt.bench.measure.harness import (
    INPUT_SEED,
    measure_artifact,
    measure_in_subprocess,
    rule_dict,
)
from fopt.bench.measure.machine import (
    busy_warning,
    cpus_busy,
    default_threads,
    machine_record,
)
from fopt.bench.rows import BenchResult, BenchRow
from fopt.describe.hints import ModelHints
from fopt.describe.infer import cards_for
from fopt.errors import UsageError
from fopt.runtime import resolve_device
from fopt.runtime.timing import (
    Clock,
    StopRule,
    check_clock,
    combine,
    get_clock,
    summarize,
)

Measurement = list[dict[str, Any]]   # one artifact in one process: a dict per batch size (harness)


def bench_artifacts(paths: Sequence[Any], *, device: str = "cpu", batch_sizes: Sequence[int] = (1, 8),
                    threads: int | None = None, min_time_s: float = 1.0, processes: int = 1,
                    estimate: bool = True, per_layer: bool = False, rule: StopRule | None = None,
                    clock: Clock | str = "wall", hints: ModelHints | None = None,
                    hints_foreign_only: bool = False, runtime: str | None = None,
                    on_progress: Callable[[str], None] | None = None) -> BenchResult:
    """Measure every artifact at every batch size; estimates beside each row (see module doc).

    `threads` defaults to the physical cores this process may use, and is the same for every
    backend. `rule` overrides the stop rule built from `min_time_s`. `clock` is ``"wall"`` or
    ``"thread-cpu"`` (one thread only: CPU time of the calling thread, immune to other processes
    on a shared machine), or any callable for tests. `hints` describe models fopt did not make
    (`fopt.describe`): timing one needs nothing beyond a static input shape. Each entry of
    `paths` is an artifact (run on `runtime`; None = its format's default runtime) or an
    ``(artifact, runtime)`` pair, so one run can time the same file on several runtimes.
    """

    if not paths:
        raise UsageError("give at least one artifact to benchmark")
    batch_sizes = [int(b) for b in batch_sizes]
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise UsageError(f"batch sizes must be >= 1, got {batch_sizes}")
    if processes < 1:
        raise UsageError(f"--processes must be >= 1, got {processes}")
    device = resolve_device(device)
    threads = int(threads or default_threads())
    if threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    rule = rule or StopRule(min_time_s=min_time_s)
    clock_name = clock if isinstance(clock, str) else "custom"
    if isinstance(clock, str):
        get_clock(clock)
        check_clock(clock, threads, device)
    elif processes > 1:
        raise UsageError("a custom clock cannot be sent to measuring processes; use processes=1")
    say = on_progress or (lambda msg: None)
    machine = machine_record(gpu=device == "cuda")
    busy = cpus_busy() if device == "cpu" else None
    busy_msg = busy_warning(threads, busy) if clock_name != "thread-cpu" else None

    targets = [(str(p[0]), p[1]) if isinstance(p, tuple) else (str(p), runtime) for p in paths]
    cards = cards_for([path for path, _ in targets], hints, foreign_only=hints_foreign_only)
    runs = _measure_rounds(targets, device=device, batch_sizes=batch_sizes, threads=threads, rule=rule,
                           clock=clock, processes=processes, say=say, cards=cards)
    rows = [row for (path, rt), r in zip(targets, runs)
            for row in rows_from_measurements(path, device, threads, r, batch_sizes, runtime=rt)]

    cal = None
    if estimate or per_layer:
        cal = calibration_for(device, threads, clock_name)
        say("estimating")
        estimate_rows(rows, cal=cal if estimate else None, machine=machine, per_layer=per_layer, threads=threads,
                      clock=clock_name, cards=cards)
    settings = {"device": device, "batch_sizes": batch_sizes, "threads": threads, "processes": processes,
                "clock": clock_name,
                "stop_rule": rule_dict(rule), "input": f"standard normal, seed {INPUT_SEED}",
                "estimate": estimate, "per_layer": per_layer,
                "cpus_busy_at_start": busy, "busy_warning": busy_msg}
    return BenchResult(machine=machine, settings=settings, results=rows, calibration=calibration_info(cal))


def _measure_rounds(targets: Sequence[tuple[str, str | None]], *, device: str, batch_sizes: list[int], threads: int,
                    rule: StopRule, clock: Clock | str, processes: int, say: Callable[[str], None],
                    cards: dict[str, dict[str, Any]]) -> list[list[Measurement]]:
    """Per artifact, its measurement from each process (this one when `processes` is 1)."""
    # Rounds over all artifacts rather than K processes back to back: a slow spell of a shared
    # (or virtualised) machine then lands on one process of several artifacts, which the spread
    # column shows, instead of on every process of one artifact, which no statistic can detect.
    runs: list[list[Measurement]] = [[] for _ in targets]
    for k in range(processes):
        for i, (path, rt) in enumerate(targets):
            on = f" on {rt}" if rt else ""
            if processes == 1:
                say(f"measuring {path}{on}")
                runs[i].append(measure_artifact(path, device=device, batch_sizes=batch_sizes, threads=threads,
                                                rule=rule, clock=clock, card=cards.get(str(path)), runtime=rt))
            else:
                say(f"measuring {path}{on} (process {k + 1}/{processes})")
                # a custom clock was refused before: only a clock's name crosses the process boundary
                runs[i].append(measure_in_subprocess(str(path), device=device, batch_sizes=batch_sizes,
                                                     threads=threads, rule=rule, clock=str(clock),
                                                     card=cards.get(str(path)), runtime=rt))
    return runs


def rows_from_measurements(path: str, device: str, threads: int, runs: list[Measurement],
                           batch_sizes: Sequence[int], runtime: str | None = None) -> list[BenchRow]:
    """One row per batch size, pooling that batch size's samples over the processes in `runs`.

    A batch size that failed in any process is an error row (the first process's error)."""
    rows = []
    for i, b in enumerate(batch_sizes):
        per_proc = [r[i] for r in runs]
        row = BenchRow(artifact=str(path), batch_size=b, device=device, threads=threads, processes=len(runs))
        first_meta = next((p for p in per_proc if p.get("backend")), {})
        row.backend, row.precision = first_meta.get("backend"), first_meta.get("precision")
        row.runtime = first_meta.get("runtime") or runtime
        row.execution = first_meta.get("execution")
        ok = [p for p in per_proc if p.get("status") == "ok"]
        if len(ok) < len(per_proc):
            bad = next(p for p in per_proc if p.get("status") != "ok")
            rows.append(row.fail(bad.get("error") or "measurement failed"))
            continue
        row.timer = ok[0].get("timer", "wall")
        h2d = [p["h2d_ms"] for p in ok if p.get("h2d_ms") is not None]
        row.h2d_ms = float(np.median(h2d)) if h2d else None
        faults = [p["page_faults"] for p in ok if p.get("page_faults") is not None]
        row.page_faults = float(np.median(faults)) if faults else None
        if len(ok) == 1:
            row.stats = summarize(ok[0]["samples_s"], stop_reason=ok[0]["stop_reason"],
                                  warmup_iters=ok[0]["warmup_iters"])
        else:
            row.stats = combine([p["samples_s"] for p in ok], stop_reasons=[p["stop_reason"] for p in ok])
            row.stats.warmup_iters = ok[0]["warmup_iters"]
        rows.append(row)
    return rows
