"""OpenVINO: one runner over ONNX files (FP32, FP16, QDQ INT8) and over OpenVINO IR (.xml + .bin).

An ONNX file's default runtime stays ONNX Runtime; ``open_runner(path, runtime="openvino")``
runs the same file through OpenVINO's ONNX frontend, and an IR file (``fopt optimize
--openvino``) runs on OpenVINO by default. CPU only.

Settings are the ones every backend gets, so rows compare fairly: ``INFERENCE_NUM_THREADS`` =
the run's threads, ``NUM_STREAMS`` 1, ``PERFORMANCE_HINT`` LATENCY. The CPU plugin may compute
in BF16 or FP16 on CPUs that have them; ``INFERENCE_PRECISION_HINT`` is pinned to f32 for every
artifact that is not FP16 itself, so an accuracy delta is never hidden. `Runner.execution` reports
what the compiled model actually ran with (device, inference precision, threads, streams).

A model is compiled with a static input shape, one compiled model per batch size it meets (the
first call at a new batch size compiles; later ones reuse it), as OpenVINO's own benchmark tool does.

``import openvino`` happens only when a runner loads, so this module imports without it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from fopt.artifacts import read_card
from fopt.errors import (
    FoptError,
    InputError,
    MissingDependency,
    ValidationError,
    first_line,
)
from fopt.runtime.base import RUNNERS, Runner, register_runtime
from fopt.runtime.onnxrt import embedded_card

INSTALL_HINT = "pip install fopt[openvino]"
MAX_COMPILED = 4   # compiled shapes kept per runner (eval uses two: full and last batch)
# IR constants: <data element_type="f32" offset="..." shape="..." size="..."/> (the .bin byte range)
_CONST_RANGE = re.compile(r'<data\b[^>]*?\boffset="(\d+)"[^>]*?\bsize="(\d+)"')


def import_openvino():
    """The openvino module, else MissingDependency naming what to install."""
    try:
        import openvino as ov
    except ImportError:
        raise MissingDependency(f"OpenVINO is not installed: {INSTALL_HINT}") from None
    return ov


def openvino_unavailable_reason() -> str | None:
    """None if OpenVINO can run on this machine's CPU, else the one-line reason."""
    try:
        ov = import_openvino()
        if "CPU" not in ov.Core().available_devices:
            return "OpenVINO sees no CPU device here (it needs x86-64 with AVX2 or newer, or ARM)"
    except MissingDependency as e:
        return str(e)
    except Exception as e:  # a plugin that fails to initialise on this CPU
        return f"OpenVINO cannot start its CPU plugin: {first_line(e)}"
    return None


def ir_weights_path(xml: str | Path) -> Path:
    return Path(xml).with_suffix(".bin")


def check_ir_files(xml: str | Path) -> Path:
    """The IR's .bin, checked to exist and to hold every constant the .xml points into; a
    missing or truncated .bin is one InputError naming both files."""
    xml = Path(xml)
    weights = ir_weights_path(xml)
    try:
        text = xml.read_text(errors="replace")
    except OSError as e:
        raise InputError(f"{xml}: unreadable OpenVINO IR ({e.strerror})") from None
    if "<net" not in text[:4096]:
        raise InputError(f"{xml}: not an OpenVINO IR .xml (no <net> element)")
    needed = max((int(o) + int(s) for o, s in _CONST_RANGE.findall(text)), default=0)
    if not weights.is_file():
        if needed:
            raise InputError(f"{xml}: its weights file {weights} is missing (the IR is the .xml and "
                             f"the .bin together)")
        return weights
    have = weights.stat().st_size
    if have < needed:
        raise InputError(f"{xml}: its weights file {weights} is truncated ({have} bytes; the .xml "
                         f"needs {needed})")
    return weights


class _OpenVINORunner(Runner):
    backend = "openvino"
    runtime = "openvino"

    def __init__(self, path, device: str = "cpu", threads: int | None = None, **options: Any):
        super().__init__(path, device=device, threads=threads, **options)
        if self.device != "cpu":
            raise InputError(f"{self.path}: fopt runs OpenVINO on the CPU only; use --device cpu")
        self._compiled: dict[tuple[tuple[int, ...], bool], Any] = {}
        self._info: dict[str, Any] = {}

    # -- loading ------------------------------------------------------------------------------
    def _read_model(self, core: Any) -> Any:
        return core.read_model(str(self.path))

    def _config(self, profile: bool = False) -> dict[str, Any]:
        import openvino.properties as props
        import openvino.properties.hint as hints

        config: dict[str, Any] = {props.num_streams: 1, hints.performance_mode: hints.PerformanceMode.LATENCY}
        if self.threads:
            config[props.inference_num_threads] = int(self.threads)
        if self.precision != "fp16":
            import openvino as ov

            config[hints.inference_precision] = ov.Type.f32
        if profile:   # performance counters cost time: only the per-layer copy has them
            config[props.enable_profiling] = True
        return config

    def _load_impl(self) -> None:
        ov = import_openvino()
        self.core = ov.Core()
        try:
            self.model = self._read_model(self.core)
        except FoptError:
            raise
        except Exception as e:
            raise InputError(f"{self.path}: OpenVINO cannot read it: {first_line(e)}") from None
        if len(self.model.inputs) != 1:
            raise InputError(f"{self.path}: the model has {len(self.model.inputs)} inputs; fopt feeds "
                             f"one image batch")
        self._compiled = {}
        dim = self.model.inputs[0].get_partial_shape()[0]   # the model's own static batch, else 1
        self._compile(self.feed.at_batch(dim.get_length() if dim.is_static else 1))

    def _compile(self, shape: tuple[int, ...], profile: bool = False) -> Any:
        """The compiled model and its infer request for an input `shape` (compiled once per
        shape, and once more with performance counters for `layer_times`)."""
        shape = tuple(int(d) for d in shape)
        if (shape, profile) in self._compiled:
            return self._compiled[(shape, profile)]
        model = self.model.clone()
        if not model.inputs[0].get_partial_shape().is_static:
            try:
                model.reshape({model.inputs[0]: list(shape)})
            except Exception as e:
                raise ValidationError(f"{self.path.name}: OpenVINO cannot reshape it to {shape}: "
                                      f"{first_line(e)}") from None
        try:
            compiled = self.core.compile_model(model, "CPU", self._config(profile))
        except Exception as e:
            raise InputError(f"{self.path}: OpenVINO cannot compile it for the CPU: {first_line(e)}") from None
        if len(self._compiled) >= MAX_COMPILED:
            self._compiled.pop(next(iter(self._compiled)))
        entry = (compiled, compiled.create_infer_request())
        self._compiled[(shape, profile)] = entry
        if not self._info:
            self._info = self._execution_of(compiled)
        return entry

    def _execution_of(self, compiled: Any) -> dict[str, Any]:
        import openvino.properties as props
        import openvino.properties.hint as hints

        def get(prop: Any) -> Any:
            try:
                return compiled.get_property(prop)
            except Exception:
                return None

        devices = get("EXECUTION_DEVICES")
        precision = get(hints.inference_precision)
        return {"execution_devices": list(devices) if devices else None,
                "inference_precision": str(precision.get_type_name() if hasattr(precision, "get_type_name")
                                           else precision) if precision is not None else None,
                "threads": get(props.inference_num_threads), "streams": get(props.num_streams)}

    @property
    def execution(self) -> dict[str, Any]:
        return {"device": self.device, **self._info}

    def _close_impl(self) -> None:
        self._compiled = {}
        self.model = None
        self.core = None

    # -- inference ----------------------------------------------------------------------------
    def _check_batch_impl(self, batch: np.ndarray) -> None:
        model = getattr(self, "model", None)
        if model is None:
            return
        shape = model.inputs[0].get_partial_shape()
        if shape.rank.is_static and shape.rank.get_length() != batch.ndim:
            raise ValidationError(f"{self.path.name}: its input has rank {shape.rank.get_length()}, "
                                  f"got a batch of shape {tuple(batch.shape)}")
        for axis in range(1, min(batch.ndim, shape.rank.get_length() if shape.rank.is_static else 0)):
            dim = shape[axis]
            if dim.is_static and dim.get_length() != batch.shape[axis]:
                raise ValidationError(f"{self.path.name}: expected input {shape}, got {tuple(batch.shape)}")
        dim0 = shape[0] if shape.rank.is_static else None
        if dim0 is not None and dim0.is_static and dim0.get_length() != batch.shape[0]:
            raise ValidationError(f"{self.path.name}: its batch size is fixed at {dim0.get_length()}, "
                                  f"got {batch.shape[0]}")

    def _prepare_impl(self, batch: np.ndarray) -> tuple[Any, np.ndarray]:
        _, request = self._compile(batch.shape)   # compiling is never inside a timed loop
        return request, batch

    def _run_impl(self, prepared: tuple[Any, np.ndarray]) -> Any:
        request, batch = prepared
        request.infer({0: batch}, share_inputs=True, share_outputs=True)
        return request.get_output_tensor(0).data

    def _to_numpy_impl(self, output: Any) -> np.ndarray:
        return np.array(output, dtype=np.float32, copy=True)   # the request reuses its buffer

    # -- per layer ----------------------------------------------------------------------------
    def layer_times(self, batch: np.ndarray, runs: int = 10) -> list[dict[str, Any]]:
        """Per executed layer: OpenVINO's performance counters (median real time over `runs`
        runs after a first one), with its type, the kernel it ran (``exec_type``, e.g.
        ``jit_avx2_I8``) and its share. A copy compiled with ``PERF_COUNT`` runs them, so the
        timed model never carries the counters' cost."""
        arr = self.validate_batch(batch)
        self.load()
        _, request = self._compile(arr.shape, profile=True)
        self.run_prepared((request, arr))
        samples: dict[str, list[float]] = {}
        meta: dict[str, dict[str, Any]] = {}
        for _ in range(max(1, runs)):
            self.run_prepared((request, arr))
            for info in request.profiling_info:
                if str(info.status).endswith("EXECUTED") and not str(info.status).endswith("NOT_EXECUTED"):
                    samples.setdefault(info.node_name, []).append(info.real_time.total_seconds() * 1e3)
                    meta.setdefault(info.node_name, {"op": info.node_type, "exec_type": info.exec_type})
        medians = {name: float(np.median(v)) for name, v in samples.items()}
        total = sum(medians.values()) or None
        return [{"name": name, **meta[name], "measured_ms": ms,
                 "share_pct": (ms / total * 100.0) if total else None,
                 "source": "openvino performance counters"} for name, ms in medians.items()]


@register_runtime("onnx", "openvino")
class OpenVINOOnnxRunner(_OpenVINORunner):
    """An ONNX file (FP32, FP16, QDQ INT8) through OpenVINO's ONNX frontend."""
    format = "onnx"

    def _read_card(self) -> dict[str, Any]:
        card = read_card(self.path, required=False) or embedded_card(self.path)
        if card is None:
            raise InputError(f"{self.path}: ONNX file has no fopt card")
        return card


@RUNNERS.register("openvino")
class OpenVINOIRRunner(_OpenVINORunner):
    """An OpenVINO IR: the .xml graph and the .bin weights beside it."""
    format = "openvino"

    def _read_model(self, core: Any) -> Any:
        weights = check_ir_files(self.path)
        if weights.is_file():
            return core.read_model(str(self.path), str(weights))
        return core.read_model(str(self.path))
