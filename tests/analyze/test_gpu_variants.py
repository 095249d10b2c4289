"""GPU estimates: the TF32 peak for FP32 convolutions/GEMMs, the exact board variant for a
reported GPU name (or none, with the reason), and the GPU model in the CUDA calibration key."""

from __future__ import annotations

import types

import pytest

from fopt.analyze.devices import DEVICES, get_device_spec, spec_for_gpu
from fopt.analyze.roofline import estimate_latency, node_peak


@pytest.mark.parametrize("reported, entry, bandwidth_gb_s", [
    ("Tesla T4", "t4", 320),
    ("NVIDIA L4", "l4", 300),
    ("NVIDIA A10", "a10", 600),
    ("NVIDIA A100-SXM4-80GB", "a100", 2039),
    ("NVIDIA A100-SXM4-40GB", "a100-40gb", 1555),
    ("NVIDIA A100-PCIE-40GB", "a100-pcie-40gb", 1555),
    ("NVIDIA A100 80GB PCIe", "a100-pcie-80gb", 1935),
    ("NVIDIA H100 80GB HBM3", "h100", 3350),
    ("NVIDIA H100 PCIe", "h100-pcie", 2000),
    ("NVIDIA H100 NVL", "h100-nvl", 3900),
    ("NVIDIA H200", "h200", 4800),
    ("NVIDIA H200 NVL", "h200-nvl", 4800),
])
def test_reported_names_map_to_their_exact_variant(reported, entry, bandwidth_gb_s):
    spec, why = spec_for_gpu(reported)
    assert why is None and spec.name == entry
    assert spec.bandwidth_bytes_per_s == bandwidth_gb_s * 1e9


def test_variants_differ_where_the_datasheets_do():
    assert get_device_spec("h100-pcie").peak("fp16") < get_device_spec("h100").peak("fp16")
    assert get_device_spec("h200-nvl").peak("fp32") == 60e12 < get_device_spec("h200").peak("fp32")


@pytest.mark.parametrize("reported, why", [
    ("NVIDIA A100-SXM4-40GB MIG 1g.5gb", "MIG slice"),
    ("NVIDIA H100 80GB HBM3 MIG 3g.40gb", "MIG slice"),
    ("NVIDIA A10G", "matches no variant"),
    ("NVIDIA GH200 480GB", "matches no variant"),
    ("NVIDIA A100", "matches no variant"),   # SXM or PCIe, 40 or 80 GB: unknown, so none
])
def test_mig_slices_and_unknown_variants_match_nothing(reported, why):
    spec, reason = spec_for_gpu(reported)
    assert spec is None and why in reason and reported in reason


def test_every_entry_is_reachable_from_a_reported_name():
    reachable = {spec_for_gpu(n)[0].name for n in (
        "Tesla T4", "NVIDIA L4", "NVIDIA A10", "NVIDIA A100-SXM4-80GB", "NVIDIA A100-SXM4-40GB",
        "NVIDIA A100-PCIE-40GB", "NVIDIA A100 80GB PCIe", "NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe",
        "NVIDIA H100 NVL", "NVIDIA H200", "NVIDIA H200 NVL")}
    assert reachable == set(DEVICES.names())


def _layer(kind: str, precision: str = "fp32"):
    return types.SimpleNamespace(kind=kind, precision=precision, flops=2 * 10 ** 9, bytes_moved=1,
                                 executes=True, name="n", op_type="Conv")


def test_fp32_convolutions_are_priced_at_the_tf32_tensor_core_rate():
    a100, t4 = get_device_spec("a100"), get_device_spec("t4")
    assert node_peak(a100, _layer("conv")) == 156e12            # TF32 tensor cores, not 19.5 CUDA-core
    assert node_peak(a100, _layer("relu")) == 19.5e12           # element-wise work stays on CUDA cores
    assert node_peak(a100, _layer("conv", "fp16")) == 312e12
    assert node_peak(t4, _layer("conv")) == 8.1e12              # Turing has no TF32
    est = estimate_latency([_layer("conv")], a100, precision="fp32", batch=1)
    assert est.naive_ms == pytest.approx(1e3 * 2e9 / 156e12)
    assert est.roofline_ms == pytest.approx(1e3 * (2e9 / 156e12 + a100.node_overhead_s))


def test_bench_estimates_use_the_variant_or_say_none_matched():
    from fopt.bench.costmodel.cache import Calibration
    from fopt.bench.estimates import device_spec_for

    spec, note = device_spec_for("cuda", None, {"gpu": {"name": "NVIDIA H100 PCIe"}})
    assert spec.name == "h100-pcie" and note is None
    spec, note = device_spec_for("cuda", None, {"gpu": {"name": "NVIDIA A100-SXM4-40GB MIG 1g.5gb"}})
    assert spec is None and "MIG slice" in note and "--calibrate --device cuda" in note
    cal = Calibration(summary={"name": "cuda:x", "peak_flops": {"fp32": 1e13}, "mem_bandwidth": 1e12,
                               "per_node_overhead_s": 4e-6})
    spec, note = device_spec_for("cuda", cal, {"gpu": {"name": "NVIDIA H800"}})
    assert spec.name == "cuda:x" and "matches no variant" in note


# ----------------------------------------------------------------------------- calibration key

def _cuda_cal(gpu: str, peak: float) -> dict:
    from fopt.bench.measure.machine import machine_key

    return {"schema": 3, "created": "2026-01-01T00:00:00+00:00", "device": "cuda", "threads": 0,
            "machine_key": machine_key(), "machine": {"gpu": {"name": gpu}},
            "summary": {"name": f"cuda:{gpu}", "peak_flops": {"fp32": peak}, "mem_bandwidth": 3e11,
                        "per_node_overhead_s": 5e-6}, "backends": {}}


def test_cuda_calibration_is_keyed_by_the_gpu_model(tmp_path, monkeypatch):
    from fopt.bench.costmodel import cache

    monkeypatch.setenv("FOPT_CACHE_DIR", str(tmp_path))
    cache.save_calibration(_cuda_cal("Tesla T4", 7e12))
    cache.save_calibration(_cuda_cal("NVIDIA L4", 2.5e13))
    assert cache.load_machine_calibration("cuda", gpu="Tesla T4")["summary"]["peak_flops"]["fp32"] == 7e12
    assert cache.load_machine_calibration("cuda", gpu="NVIDIA L4")["summary"]["peak_flops"]["fp32"] == 2.5e13
    assert cache.load_machine_calibration("cuda", gpu="NVIDIA H200") is None   # never another GPU's figures
    monkeypatch.setattr(cache, "current_gpu", lambda: "NVIDIA L4")   # the default: this process's GPU
    assert cache.load_machine_calibration("cuda")["summary"]["name"] == "cuda:NVIDIA L4"
    monkeypatch.setattr(cache, "current_gpu", lambda: None)
    assert cache.load_machine_calibration("cuda") is None
