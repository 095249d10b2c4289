"""The device table and the `cpu` device backed by `fopt bench --calibrate`."""

from __future__ import annotations

import sys

import pytest

from fopt.analyze.devices import DEVICES, DeviceSpec, device_rows, get_device_spec
from fopt.errors import FoptError, UsageError

SOURCE_FILE = sys.modules["fopt.analyze.devices"].__file__


def test_table_has_the_issue_devices_with_sources():
    assert {"t4", "l4", "a10", "a100", "h100", "h200"} <= set(DEVICES.names())
    text = open(SOURCE_FILE).read()
    for name, spec in DEVICES.items():
        assert spec.source and "datasheet" in spec.source, name
        assert spec.peak("fp32") < spec.peak("fp16") < spec.peak("int8"), name
        assert spec.bandwidth_bytes_per_s > 1e11 and 0 < spec.node_overhead_s < 1e-4
        # every number carries its datasheet quote in a comment on its line
        block = text[text.index(f'"{name}",'):]
        block = block[:block.index("_add(") if "_add(" in block else len(block)]
        assert block.count("# ") >= 4, name


def test_t4_dense_figures():
    t4 = get_device_spec("T4")
    assert t4.peak("fp32") == 8.1e12 and t4.peak("fp16") == 65e12 and t4.peak("int8") == 130e12
    assert t4.bandwidth_bytes_per_s == 320e9


def test_unknown_device_is_a_usage_error_with_a_suggestion():
    with pytest.raises(UsageError, match="Did you mean 'h100'"):
        get_device_spec("h10")


def test_peak_falls_back_to_a_wider_precision():
    spec = DeviceSpec("x", {"fp32": 1e11, "int8": 4e11}, 1e10, 1e-6, "test")
    assert spec.peak("fp16") == 1e11 and spec.peak("int8") == 4e11
    assert DeviceSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(FoptError, match="malformed"):
        DeviceSpec.from_dict({"name": "x"})


def _fake_calibration(monkeypatch, value):
    from fopt.bench.costmodel import cache

    monkeypatch.setattr(cache, "load_machine_calibration", lambda *a, **k: value)


def test_cpu_without_calibration_says_what_to_run(monkeypatch):
    from fopt.bench.costmodel.cache import CalibrationMissing, cpu_device_spec

    _fake_calibration(monkeypatch, None)
    with pytest.raises(CalibrationMissing, match=r"no CPU calibration yet: run `fopt bench --calibrate`"):
        cpu_device_spec()
    assert "cpu" not in {r["name"] for r in device_rows()}
    with pytest.raises(UsageError, match="cpu_device_spec"):
        get_device_spec("cpu")   # not a table entry: callers pass the calibrated spec


def test_cpu_with_calibration(monkeypatch):
    from fopt.bench.costmodel.cache import Calibration, cpu_device_spec

    _fake_calibration(monkeypatch, Calibration(
        threads=2, summary={"peak_flops": {"fp32": 2e11, "int8": 8e11}, "mem_bandwidth": 2.7e10,
                            "per_node_overhead_s": 5e-6, "source": "fopt bench --calibrate", "name": "cpu"}))
    cpu = cpu_device_spec()
    assert cpu.name == "cpu" and cpu.peak("int8") == 8e11 and cpu.bandwidth_bytes_per_s == 2.7e10
    assert "cpu" in {r["name"] for r in device_rows([cpu])}
    assert get_device_spec(cpu) is cpu
