"""Helpers shared by the bench tests (importable: tests/bench is on sys.path under pytest)."""

from __future__ import annotations


def synthetic_calibration(threads: int = 1) -> dict:
    """A calibration with round numbers, so estimates can be checked by arithmetic."""
    from fopt.bench.costmodel.cache import SCHEMA
    from fopt.bench.costmodel.kernels import ALL_CLASSES, COMPUTE_CLASSES
    from fopt.bench.measure.machine import machine_key, machine_record

    rec = machine_record()

    def classes():
        return {c: {"overhead_s": 5e-6, "sec_per_work": (1e-11 if c in COMPUTE_CLASSES else 2e-10),
                    "n": 3, "rel_rmse": 0.0} for c in ALL_CLASSES}

    def dram():
        return {"cache_bytes": 1e6, "sec_per_byte": 1e-10}

    return {
        "schema": SCHEMA, "created": "2026-01-01T00:00:00+00:00", "device": "cpu", "threads": threads,
        "quick": True, "machine_key": machine_key(rec), "machine": rec,
        "summary": {"name": "cpu", "peak_flops": {"fp32": 1e11, "fp16": None, "int8": 4e11},
                    "mem_bandwidth": 2e10, "cache_bandwidth": 6e10, "per_node_overhead_s": 5e-6,
                    "source": "synthetic test calibration"},
        "probes": {"overhead": {"onnxruntime_dispatch_s": 5e-6, "onnxruntime_run_fixed_s": 1e-5,
                                "torch_dispatch_s": 3e-6}},
        "backends": {
            "onnxruntime/fp32": {"classes": classes(), "dram": dram(), "run_fixed_s": 1e-5},
            "onnxruntime/int8": {"classes": classes(), "dram": dram(), "run_fixed_s": 1e-5},
            "torch-eager/fp32": {"classes": classes(), "dram": dram(), "gap": {"per_op_s": 2e-6, "per_byte_s": 0.0},
                                 "run_fixed_s": 0.0},
        },
    }
