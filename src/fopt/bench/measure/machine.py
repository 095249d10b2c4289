"""The machine record written into every bench JSON, and the key the calibration cache uses.

A latency is only meaningful with the machine it was measured on: CPU model and the instruction
set flags that change kernels (``avx512_vnni`` / ``amx`` decide whether INT8 is fast), core and
thread counts, cache sizes, the GPU and driver when there is one, and library versions. Reading
it is cheap (``/proc/cpuinfo``, ``/sys``); the GPU part imports torch only if it is already
loaded or ``gpu=True``.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import time
from pathlib import Path
from typing import Any

from fopt.artifacts import library_versions
from fopt.runtime.base import cpu_flags, cpu_info, gpu_record

# Flags that change which kernels the runtimes pick (INT8 dot products, bf16, wide vectors).
INTERESTING_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
                     "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "neon", "asimd")


def _cache_bytes(level: int) -> int | None:
    """Size of the CPU cache at `level` (from sysfs), e.g. the L3 that holds batch-1 activations."""
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    if not base.is_dir():
        return None
    for idx in sorted(base.glob("index*")):
        try:
            if int((idx / "level").read_text()) != level:
                continue
            if (idx / "type").read_text().strip() == "Instruction":
                continue
            size = (idx / "size").read_text().strip().upper()
        except (OSError, ValueError):
            continue
        m = re.fullmatch(r"(\d+)([KMG]?)", size)
        if m:
            return int(m.group(1)) * {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}[m.group(2)]
    return None


def usable_cpus() -> int:
    """CPUs this process may run on (affinity-aware; what a default thread pool would use)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def physical_cores() -> int | None:
    info = cpu_info()
    try:
        per_socket = int(info["cpu cores"])
    except (KeyError, ValueError):
        return None
    try:
        text = Path("/proc/cpuinfo").read_text()
        sockets = len(set(re.findall(r"^physical id\s*:\s*(\d+)", text, re.M))) or 1
    except OSError:
        sockets = 1
    return per_socket * sockets


def cpu_record() -> dict[str, Any]:
    info = cpu_info()
    flags = cpu_flags()
    return {
        "model": info.get("model name") or platform.processor() or platform.machine(),
        "vendor": info.get("vendor_id"),
        "family": info.get("cpu family"),
        "arch": platform.machine(),
        "flags": {f: (f in flags) for f in INTERESTING_FLAGS if flags},
        "physical_cores": physical_cores(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "l2_bytes": _cache_bytes(2),
        "l3_bytes": _cache_bytes(3),
        "hypervisor": "hypervisor" in flags,
    }


def machine_record(*, gpu: bool = False) -> dict[str, Any]:
    """Everything a reader needs to know where a number was measured."""
    return {
        "cpu": cpu_record(),
        "gpu": gpu_record(load_torch=gpu),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": library_versions(),
        "env_threads": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
                        if k in os.environ},
    }


def machine_key(record: dict[str, Any] | None = None) -> str:
    """Cache key for calibrations: CPU model + core count + the libraries whose kernels were timed.

    A new torch/onnxruntime or a different VM size gets a fresh calibration; a readable prefix
    keeps the cache folder browsable.
    """
    rec = record or machine_record()
    cpu = rec["cpu"]
    versions = rec.get("versions", {})
    parts = [cpu.get("model") or "cpu", str(cpu.get("usable_cpus")),
             *(f"{k}={versions.get(k)}" for k in ("torch", "onnxruntime", "numpy"))]
    digest = hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]
    slug = re.sub(r"[^a-z0-9]+", "-", (cpu.get("model") or "cpu").lower()).strip("-")[:32]
    return f"{slug}-{cpu.get('usable_cpus')}cpu-{digest}"


def default_threads() -> int:
    """Intra-op threads when the user gives none: the physical cores this process may use."""
    usable = usable_cpus()
    cores = physical_cores() or usable
    return max(1, min(usable, cores))


def _cpu_jiffies(stat_path: str | Path) -> tuple[int, int] | None:
    """(busy, total) jiffies over all CPUs from /proc/stat (None where there is none)."""
    try:
        first = Path(stat_path).read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if not first or first[0] != "cpu":
        return None
    vals = [int(v) for v in first[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)          # idle + iowait
    total = sum(vals[:8])                                      # guest time is already in user
    return total - idle, total


def cpus_busy(window_s: float = 0.3, stat_path: str | Path = "/proc/stat", cpus: int | None = None,
              sleep=None) -> float | None:
    """How many CPUs other work keeps busy right now (averaged over `window_s`); None off Linux.

    The load average is not used: it trails by minutes, so it still counts a training run that
    has just finished."""
    a = _cpu_jiffies(stat_path)
    (sleep or time.sleep)(window_s)
    b = _cpu_jiffies(stat_path)
    if a is None or b is None or b[1] <= a[1]:
        return None
    return (b[0] - a[0]) / (b[1] - a[1]) * (cpus or os.cpu_count() or 1)


def busy_warning(threads: int, busy: float | None, cpus: int | None = None) -> str | None:
    """One line when other work leaves fewer free CPUs than the measurement's threads."""
    cpus = cpus or os.cpu_count() or 1
    if busy is None or busy + threads <= cpus + 0.5:
        return None
    return (f"other work keeps {busy:.1f} of {cpus} CPUs busy and this run uses {threads} thread(s): timings "
            f"will be slower and noisier than on a quiet machine (torch eager with several threads can "
            f"collapse under contention); measure on a quiet machine, or use --threads 1 --clock thread-cpu")
