"""The device table and the `cpu` device backed by `fopt bench --calibrate`."""

from __future__ import annotations

import sys
import types

import pytest

from fopt.bench.devices import DEVICES, CalibrationMissing, DeviceSpec, device_rows, get_device_spec
from fopt.errors import FoptError, UsageError

SOURCE_FILE = sys.modules["fopt.bench.devices"].__file__


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


def _fake_calibrate(monkeypatch, value):
    mod = types.ModuleType("fopt.bench.calibrate")
    mod.load_calibration = lambda *a, **k: value
    monkeypatch.setitem(sys.modules, "fopt.bench.calibrate", mod)


def test_cpu_without_calibration_says_what_to_run(monkeypatch):
    _fake_calibrate(monkeypatch, None)
    with pytest.raises(CalibrationMissing, match=r"no CPU calibration yet: run `fopt bench --calibrate`"):
        get_device_spec("cpu")
    assert "cpu" not in {r["name"] for r in device_rows()}


def test_cpu_with_calibration(monkeypatch):
    _fake_calibrate(monkeypatch, {"peak_flops": {"fp32": 2e11, "int8": 8e11},
                                  "bandwidth_bytes_per_s": 2.7e10, "node_overhead_s": 5e-6,
                                  "source": "fopt bench --calibrate"})
    cpu = get_device_spec("cpu")
    assert cpu.name == "cpu" and cpu.peak("int8") == 8e11 and cpu.bandwidth_bytes_per_s == 2.7e10
    assert "cpu" in {r["name"] for r in device_rows()}

    class Cal(dict):
        def to_device_spec(self):
            return DeviceSpec("cpu", {"fp32": 1e11}, 1e10, 1e-5, "calibration object")

    _fake_calibrate(monkeypatch, Cal())
    assert get_device_spec("cpu").source == "calibration object"
