"""Page faults: how many a forward pass takes, and what one costs on this machine.

Torch eager allocates every activation afresh. With glibc's malloc, blocks above the mmap
threshold (at most 32 MiB) are mapped and unmapped on every call, and a heap whose free top
grows past the trim threshold is handed back to the kernel; either way the next forward pass
touches new pages, and each first touch is a page fault in which the kernel zeroes 4 KiB. That
can be a large share of an eager row's time (README, "Measuring honestly").

How many pages fault depends on the allocation sequence of the whole model and the allocator's
history, which no layer-by-layer model predicts well, so the bench counts them
(`faults_per_run`, from getrusage in the measuring process) and the calibration prices them
(`page_fault_probe`). ONNX Runtime's arena keeps its memory and takes almost none.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

PROBE_BYTES = 64 * 2 ** 20   # a block glibc would map afresh (above its 32 MiB mmap-threshold cap)
PAGE_BYTES = 4096


def minor_faults() -> int | None:
    """Minor page faults of this process so far (None where getrusage is not available)."""
    try:
        import resource
    except ImportError:  # not POSIX
        return None
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)


def faults_per_run(fn: Callable[[], Any], runs: int = 3) -> float | None:
    """Median minor page faults of one call of `fn` (call it warm: after the timed loop)."""
    if minor_faults() is None:
        return None
    counts = []
    for _ in range(max(1, runs)):
        f0 = minor_faults()
        fn()
        counts.append(minor_faults() - f0)  # type: ignore[operator]
    return float(statistics.median(counts))


def _fresh_pages(nbytes: int):
    """(tensor over `nbytes` of pages never touched, release): an anonymous private mapping made
    here, so that every first touch faults whatever the allocator holds. (A plain
    ``torch.empty`` of the same size stopped faulting in a process that had run a full
    calibration before: glibc served it from free heap memory, already mapped, and the probe
    priced nothing.) Released by unmapping, as glibc frees a mapped block."""
    import mmap

    import torch

    flags = getattr(mmap, "MAP_PRIVATE", None)
    if flags is None or not hasattr(mmap, "MAP_ANONYMOUS"):   # not POSIX: the allocator's fresh block
        t = torch.empty(nbytes // 4)
        return t, lambda: None
    mm = mmap.mmap(-1, nbytes, flags=flags | mmap.MAP_ANONYMOUS)
    return torch.frombuffer(mm, dtype=torch.float32), mm.close


def page_fault_probe(threads: int, clock: Callable[[], float] = time.perf_counter,
                     nbytes: int = PROBE_BYTES, reps: int = 7) -> dict[str, Any]:
    """Seconds per page fault with `threads` torch threads: filling freshly mapped pages (each
    first touch faults; unmapped afterwards, `_fresh_pages`) minus filling a reused tensor, per
    fault counted. Unmapping pages other threads touched costs TLB shootdowns too, so the
    thread count matters."""
    import torch

    n = nbytes // 4
    old_threads = torch.get_num_threads()
    torch.set_num_threads(int(threads))

    def fresh_fill() -> None:
        t, release = _fresh_pages(nbytes)
        t.fill_(1.0)
        del t
        release()

    try:
        reused = torch.empty(n)
        fresh_s, reuse_s, counts = [], [], []
        for _ in range(2):  # warm-up: first touch of `reused`, thread pool start
            reused.fill_(1.0)
            fresh_fill()
        for _ in range(reps):
            f0 = minor_faults()
            t0 = clock()
            fresh_fill()
            fresh_s.append(clock() - t0)
            counts.append((minor_faults() or 0) - (f0 or 0))
            t0 = clock()
            reused.fill_(1.0)
            reuse_s.append(clock() - t0)
    finally:
        torch.set_num_threads(old_threads)
    faults = statistics.median(counts)
    extra = max(0.0, statistics.median(fresh_s) - statistics.median(reuse_s))
    return {"seconds_per_fault": extra / faults if faults > 0 else None, "faults": faults,
            "bytes": nbytes, "pages": nbytes // PAGE_BYTES, "fresh_s": statistics.median(fresh_s),
            "reused_s": statistics.median(reuse_s), "threads": int(threads)}
