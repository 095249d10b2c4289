"""The calibration cache: one JSON file per machine, one entry per device, thread count and clock.

A CUDA entry is also keyed by the GPU model (``cuda:<GPU name>:threads=0``) and only prices rows
on that model: the same host with another GPU (a swapped card, another MIG slice, another cloud
instance of the same CPU) needs its own calibration.

The file lives under ``$FOPT_CACHE_DIR/calibration/`` (default ``~/.cache/fopt/calibration/``),
named by `fopt.bench.measure.machine.machine_key` (CPU model, CPU count, torch/onnxruntime/numpy
versions), so a new library version or VM size gets a fresh calibration. A cache file of another
schema is treated as absent and replaced by the next calibration.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fopt.analyze.devices import DeviceSpec
from fopt.artifacts import write_json_atomic
from fopt.bench.measure.machine import machine_key
from fopt.errors import FoptError, InputError, UsageError
from fopt.runtime.base import gpu_record
from fopt.workdir import cache_root


class CalibrationMissing(FoptError):
    """`cpu` was asked for before `fopt bench --calibrate` measured this machine."""


SCHEMA = 5   # 5: pool probes (chains, three sizes); 4: small-input probes (64 px layer sizes); 3: integer
             # element-wise class, fused activations in the equations (older: treated as absent, so
             # recalibrated)


def cache_dir() -> Path:
    """Where calibrations live: `fopt.workdir.cache_root`/calibration."""
    return cache_root() / "calibration"


def cache_path(key: str | None = None) -> Path:
    return cache_dir() / f"{key or machine_key()}.json"


def _entry_key(device: str, threads: int, clock: str = "wall", gpu: str | None = None) -> str:
    where = f"{device}:{gpu}" if device == "cuda" else device
    return f"{where}:threads={threads}" + ("" if clock == "wall" else f":clock={clock}")


def calibrated_gpu(cal: dict[str, Any]) -> str | None:
    """The GPU model a calibration was measured on (its machine record), None for a CPU one."""
    return ((cal.get("machine") or {}).get("gpu") or {}).get("name")


def current_gpu() -> str | None:
    """This process's CUDA device 0 model, None without a GPU."""
    return (gpu_record(0) or {}).get("name")


def save_calibration(cal: dict[str, Any]) -> Path:
    path = cache_path(cal["machine_key"])
    doc = _read_cache_file(path) or {"schema": SCHEMA, "machine_key": cal["machine_key"], "entries": {}}
    doc["entries"][_entry_key(cal["device"], cal["threads"], cal.get("clock", "wall"), calibrated_gpu(cal))] = cal
    write_json_atomic(path, doc)
    return path


def _read_cache_file(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: unreadable calibration cache ({e}); delete it and run "
                         f"`fopt bench --calibrate` again") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or "entries" not in doc:
        return None  # an older format: treated as absent, overwritten by the next calibration
    return doc


class Calibration(dict):
    """A cached calibration (a plain dict) that can also act as a `DeviceSpec` for `analyze`."""

    def to_device_spec(self) -> DeviceSpec:
        s = self["summary"]
        return DeviceSpec(name=s.get("name", self.get("device", "cpu")),
                          peak_flops={k: float(v) for k, v in s["peak_flops"].items() if v},
                          bandwidth_bytes_per_s=float(s["mem_bandwidth"]),
                          node_overhead_s=float(s["per_node_overhead_s"]), source=s.get("source", ""),
                          description=f"calibrated, {self.get('threads')} threads")


def load_machine_calibration(device: str = "cpu", threads: int | None = None, clock: str = "wall",
                             gpu: str | None = None) -> Calibration | None:
    """This machine's cached calibration for `device` (and `threads`, else the newest), or None.
    A CUDA one must have been measured on `gpu` (default: this process's GPU model).

    The dict has ``summary`` {``peak_flops`` {fp32, fp16, int8} in FLOP/s, ``mem_bandwidth``
    and ``cache_bandwidth`` in bytes/s, ``per_node_overhead_s``, ``source``} for device specs,
    and ``backends`` with the per-kernel-class fits for the calibrated estimate.
    """
    doc = _read_cache_file(cache_path())
    if not doc:
        return None
    entries = [e for e in doc["entries"].values()
               if e.get("device") == device and e.get("clock", "wall") == clock]
    if device == "cuda":
        model = gpu or current_gpu()
        entries = [e for e in entries if model is not None and calibrated_gpu(e) == model]
    if threads is not None:
        entries = [e for e in entries if e.get("threads") == threads]
    if not entries:
        return None
    cal = Calibration(max(entries, key=lambda e: e.get("created", "")))
    cal["path"] = str(cache_path())
    return cal


def require_machine_calibration(device: str = "cpu", threads: int | None = None, clock: str = "wall") -> Calibration:
    cal = load_machine_calibration(device, threads, clock)
    if cal is None:
        where = f" for {threads} threads" if threads is not None else ""
        raise UsageError(f"no calibration for device {device}{where} on this machine; run "
                         f"`fopt bench --calibrate --device {device}"
                         f"{f' --threads {threads}' if threads else ''}"
                         f"{f' --clock {clock}' if clock != 'wall' else ''}` first")
    return cal


def cpu_device_spec() -> DeviceSpec:
    """This machine as a device for the roofline (`fopt analyze --device-spec cpu`): its newest
    CPU calibration's GEMM rates, memory bandwidth and per-node overhead."""
    cal = load_machine_calibration()
    if cal is None:
        raise CalibrationMissing("no CPU calibration yet: run `fopt bench --calibrate`")
    return cal.to_device_spec()
