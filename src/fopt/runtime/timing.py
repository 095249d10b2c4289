"""The timing harness: warm-up, a stop rule, robust statistics, and timers that add nothing.

How one row (artifact x batch size) is measured:

1. One input per (input size, batch size), drawn once from a fixed seed, so every backend in a run
   sees the same numbers. It is converted by ``runner.prepare`` *outside* the timed loop; the loop
   times ``run_prepared`` + ``synchronize`` only (on CUDA, the host-to-device copy is timed
   separately and reported as ``h2d_ms``).
2. Warm-up: at least ``warmup_iters`` iterations and at least ``warmup_s`` seconds.
3. Timed loop (`StopRule`): at least ``min_iters`` iterations; then it stops at the first of
   - the median is stable: at check points n = ``first_check`` x 2^k the median of all samples
     so far moved by at most ``rel_tol`` since the previous check point, ``checks_needed`` times
     in a row;
   - the time budget ``min_time_s`` (the CLI's ``--min-time``) is spent;
   - ``max_iters`` iterations.
   The reason is recorded as ``stop_reason``.
4. Statistics after outlier clipping: iterative sigma clipping (at most 5 rounds, drop samples
   further than ``clip_sigma`` (3) standard deviations from the mean, never below half of the
   samples). p50/p90/p99 (linear interpolation), mean and std are computed on the kept samples;
   ``n`` and ``n_clipped`` say how many were used and dropped. Throughput is
   ``batch_size / p50``, in items per second.

Time comes from a pluggable clock (``time.perf_counter`` by default) so the statistics and the
stop logic are tested on a fake clock. On CUDA, `CudaEventTimer` brackets each iteration with CUDA
events on the current stream and synchronises.

Between processes a shared virtual machine varies far more than within one (tens of percent for
torch eager on the 2-core VM fopt is developed on; README, "Measuring honestly"), so `combine` pools several processes' samples and keeps each process's p50 and the spread
``max/min - 1`` across them.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

from fopt.errors import UsageError

Clock = Callable[[], float]          # seconds, monotonic
TimedStep = Callable[[], float]      # runs one iteration, returns its duration in seconds

# Named clocks. "thread-cpu" is the calling thread's CPU time: with one intra-op thread every
# kernel runs on the calling thread, so it measures the work itself and not the time another
# process held the CPU - useful on a shared machine, blind to any waiting (I/O, GPU, other threads).
CLOCKS: dict[str, Clock] = {"wall": time.perf_counter, "thread-cpu": time.thread_time}


def get_clock(clock: str | Clock) -> Clock:
    if callable(clock):
        return clock
    if clock not in CLOCKS:
        raise UsageError(f"unknown clock {clock!r}; choose {' or '.join(CLOCKS)}")
    return CLOCKS[clock]


def check_clock(clock: str, threads: int, device: str) -> None:
    """thread-cpu needs every kernel on the calling thread: one thread, CPU only."""
    if clock == "thread-cpu" and (threads != 1 or device != "cpu"):
        raise UsageError("--clock thread-cpu measures the calling thread's CPU time, so it needs "
                         "--threads 1 and --device cpu")


@dataclass(frozen=True)
class StopRule:
    """When to stop measuring one row (see the module docstring)."""
    min_time_s: float = 1.0     # time budget of the timed loop (CLI --min-time)
    warmup_iters: int = 3       # at least this many warm-up iterations...
    warmup_s: float = 0.2       # ...and at least this long
    min_iters: int = 5          # never fewer samples, even past the budget
    max_iters: int = 100_000    # hard cap
    rel_tol: float = 0.01       # "stable" = median moved by at most 1% between check points
    first_check: int = 20       # first stability check point; later ones double
    checks_needed: int = 2      # consecutive stable checks before stopping early

    def __post_init__(self) -> None:
        if self.min_time_s <= 0:
            raise UsageError(f"--min-time must be > 0 seconds, got {self.min_time_s}")
        if self.min_iters < 1 or self.max_iters < self.min_iters:
            raise UsageError(f"need 1 <= min_iters <= max_iters, got {self.min_iters}, {self.max_iters}")
        if self.warmup_iters < 0 or self.warmup_s < 0:
            raise UsageError("warm-up iterations and time must be >= 0")


@dataclass
class LatencyStats:
    """Summary of one row's samples (all times in milliseconds)."""
    p50: float
    p90: float
    p99: float
    mean: float
    std: float
    min: float
    max: float
    n: int
    n_clipped: int
    stop_reason: str = ""
    warmup_iters: int = 0
    process_p50: list[float] = field(default_factory=list)   # one per process when K > 1
    spread_pct: float | None = None                          # max/min - 1 of process_p50, in %

    def latency_ms(self) -> dict[str, float]:
        """The five numbers the JSON's ``latency_ms`` object holds."""
        return {"p50": self.p50, "p90": self.p90, "p99": self.p99, "mean": self.mean, "std": self.std}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- statistics

def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method) of an ascending sequence."""
    if not sorted_values:
        raise ValueError("no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var)


def sigma_clip(values: Sequence[float], sigma: float = 3.0, max_rounds: int = 5) -> list[float]:
    """Iteratively drop values more than `sigma` std from the mean; keeps at least half."""
    kept = list(values)
    for _ in range(max_rounds):
        if len(kept) < 3:
            break
        mean, std = _mean_std(kept)
        if std == 0:
            break
        nxt = [v for v in kept if abs(v - mean) <= sigma * std]
        if len(nxt) == len(kept) or len(nxt) < len(values) / 2:
            break
        kept = nxt
    return kept


def summarize(samples_s: Sequence[float], *, clip_sigma: float = 3.0, stop_reason: str = "",
              warmup_iters: int = 0) -> LatencyStats:
    """Statistics (ms) of per-iteration durations given in seconds."""
    if not samples_s:
        raise ValueError("no samples to summarise")
    ms = [s * 1e3 for s in samples_s]
    kept = sorted(sigma_clip(ms, clip_sigma))
    mean, std = _mean_std(kept)
    return LatencyStats(p50=percentile(kept, 50), p90=percentile(kept, 90), p99=percentile(kept, 99),
                        mean=mean, std=std, min=kept[0], max=kept[-1], n=len(kept),
                        n_clipped=len(ms) - len(kept), stop_reason=stop_reason,
                        warmup_iters=warmup_iters)


def combine(per_process_samples_s: Sequence[Sequence[float]], *, stop_reasons: Sequence[str] = (),
            clip_sigma: float = 3.0) -> LatencyStats:
    """Pool several processes' samples, each process weighing the same; keep each process's p50
    and the spread across them.

    Every process runs for the same time budget, so a fast one leaves more samples; pooled as
    they are, one fast process out of three would set the p50. Each process therefore gives the
    same number of samples (the fewest any gave, evenly spaced over its run)."""
    runs = [list(s) for s in per_process_samples_s if s]
    if not runs:
        raise ValueError("no samples to combine")
    k = min(len(run) for run in runs)
    pooled = [run[(i * len(run)) // k] for run in runs for i in range(k)]
    stats = summarize(pooled, clip_sigma=clip_sigma, stop_reason=",".join(sorted(set(stop_reasons))))
    stats.process_p50 = [summarize(run, clip_sigma=clip_sigma).p50 for run in runs]
    lo, hi = min(stats.process_p50), max(stats.process_p50)
    stats.spread_pct = (hi / lo - 1.0) * 100.0 if lo > 0 else None
    return stats


def throughput_ips(batch_size: int, p50_ms: float) -> float:
    return batch_size / (p50_ms / 1e3) if p50_ms > 0 else float("nan")


# ----------------------------------------------------------------------------- timers

class WallTimer:
    """Times fn() + sync() with a monotonic clock (the CPU path, and CUDA without events)."""
    def __init__(self, fn: Callable[[], Any], sync: Callable[[], None] | None = None,
                 clock: Clock = time.perf_counter):
        self.fn, self.sync, self.clock = fn, sync, clock

    def __call__(self) -> float:
        clock, fn, sync = self.clock, self.fn, self.sync
        t0 = clock()
        fn()
        if sync is not None:
            sync()
        return clock() - t0


class CudaEventTimer:
    """CUDA events around fn() on the current stream; waits for the end event."""
    def __init__(self, fn: Callable[[], Any]):
        import torch

        self.fn = fn
        self.start = torch.cuda.Event(enable_timing=True)
        self.end = torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()

    def __call__(self) -> float:
        self.start.record()
        self.fn()
        self.end.record()
        self.end.synchronize()
        return self.start.elapsed_time(self.end) / 1e3


# ----------------------------------------------------------------------------- the loop

@dataclass
class LoopResult:
    samples_s: list[float]
    stop_reason: str
    warmup_iters: int
    elapsed_s: float

    def stats(self) -> LatencyStats:
        return summarize(self.samples_s, stop_reason=self.stop_reason, warmup_iters=self.warmup_iters)


def _median(values: list[float]) -> float:
    return percentile(sorted(values), 50)


def measure(step: TimedStep, rule: StopRule = StopRule(), clock: Clock = time.perf_counter) -> LoopResult:
    """Warm up, then call `step` until `rule` says stop; `clock` only tracks the budgets."""
    t_start = clock()
    warm = 0
    while warm < rule.warmup_iters or (clock() - t_start) < rule.warmup_s:
        step()
        warm += 1
        if warm >= 1_000_000:  # a clock that never advances must not spin forever
            break
    samples: list[float] = []
    t0 = clock()
    next_check = max(rule.first_check, rule.min_iters)
    last_median: float | None = None
    stable_in_a_row = 0
    reason = "max_iters"
    while len(samples) < rule.max_iters:
        samples.append(step())
        n = len(samples)
        if n < rule.min_iters:
            continue
        if n == next_check:
            med = _median(samples)
            if last_median is not None and abs(med - last_median) <= rule.rel_tol * med:
                stable_in_a_row += 1
            else:
                stable_in_a_row = 0
            last_median = med
            next_check *= 2
            if stable_in_a_row >= rule.checks_needed:
                reason = "stable"
                break
        if clock() - t0 >= rule.min_time_s:
            reason = "time"
            break
    return LoopResult(samples_s=samples, stop_reason=reason, warmup_iters=warm,
                      elapsed_s=clock() - t_start)
