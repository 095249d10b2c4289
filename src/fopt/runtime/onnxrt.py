"""ONNX Runtime: the one place sessions are made (`ort_session`), and its runner.

The runner uses the CPU provider, or the CUDA/TensorRT providers for --device cuda. Everything
else that needs a session (export's simplification check, the executed-graph view of optimize,
profiling and the calibration probes of bench) calls `ort_session`, so thread settings, logging
and profiling are set one way.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from fopt.artifacts import ONNX_CARD_KEY, onnx_card_from_proto, read_card
from fopt.errors import (
    DeviceUnavailable,
    InputError,
    MissingDependency,
    ValidationError,
    first_line,
)
from fopt.onnxgraph import check_external_data
from fopt.runtime.base import RUNNERS, Runner

CPU = ("CPUExecutionProvider",)


def session_options(*, threads: int | None = None, profile_prefix: str | None = None,
                    optimized_model_path: str | None = None, **settings: Any):
    """SessionOptions: `threads` intra-op threads (and one inter-op thread), optional profiling
    into files starting with `profile_prefix`, the optimized graph saved to
    `optimized_model_path`, then any further `SessionOptions` attribute from `settings`."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    # Errors only: ORT's graph-cleanup notices (unused initializers, the NCHWc "hardware
    # specific" model warning) are not actionable for users and drown the progress output.
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = str(profile_prefix)
    if optimized_model_path:
        so.optimized_model_filepath = str(optimized_model_path)
    for key, value in settings.items():
        setattr(so, key, value)
    return so


def ort_session(model: "str | os.PathLike | bytes", *, providers: Sequence[str] = CPU, **options: Any):
    """An InferenceSession on a model path or serialized model; `options` go to `session_options`."""
    import onnxruntime as ort

    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=session_options(**options), providers=list(providers))


def embedded_card(path) -> dict[str, Any] | None:
    """The card stored in an ONNX file's metadata_props, if any (external weight files are not read)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise InputError(f"{path}: not a readable ONNX file ({type(e).__name__})") from None
    return onnx_card_from_proto(model)


@RUNNERS.register("onnx")
class OnnxRuntimeRunner(Runner):
    format = "onnx"
    backend = "onnxruntime"

    def _read_card(self) -> dict[str, Any]:
        card = read_card(self.path, required=False) or embedded_card(self.path)
        if card is None:
            raise InputError(f"{self.path}: ONNX file has no fopt card (neither {self.path.name}.json "
                             f"beside it nor '{ONNX_CARD_KEY}' in its metadata_props)")
        return card

    def providers(self) -> list[str]:
        import onnxruntime as ort

        if self.device == "cpu":
            return ["CPUExecutionProvider"]
        available = ort.get_available_providers()
        if "CUDAExecutionProvider" not in available:
            raise DeviceUnavailable("--device cuda needs onnxruntime-gpu (pip install fopt[gpu]); "
                                    f"this onnxruntime offers {', '.join(available)}")
        wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        # TensorRT EP first when present (it falls back to CUDA per node); tensorrt_provider=False
        # opts out, e.g. for short runs where its engine build would dominate.
        if self.options.get("tensorrt_provider", True) and "TensorrtExecutionProvider" in available:
            wanted.insert(0, "TensorrtExecutionProvider")
        return wanted

    def session_options(self):
        return session_options(threads=self.threads)

    def _load_impl(self) -> None:
        check_external_data(self.path)   # before onnxruntime follows any external-data path
        try:
            self.session = ort_session(self.path, threads=self.threads, providers=self.providers())
        except (DeviceUnavailable, MissingDependency):
            raise
        except Exception as e:
            first = first_line(e)
            raise InputError(f"{self.path}: onnxruntime cannot load it: {first}") from None
        active = self.session.get_providers()
        if self.device == "cuda" and "CUDAExecutionProvider" not in active:
            # onnxruntime silently falls back to the CPU when the CUDA libraries fail to load
            self.session = None
            raise DeviceUnavailable(f"--device cuda: onnxruntime could not start its CUDA provider "
                                    f"(active: {', '.join(active)}); check the CUDA/cuDNN libraries "
                                    f"onnxruntime-gpu needs")
        inputs = self.session.get_inputs()
        self.input_name = inputs[0].name
        self.input_shape = list(inputs[0].shape)   # ints for static dims, names/None for dynamic
        self.input_type = inputs[0].type
        self.output_name = self.session.get_outputs()[0].name
        if len(inputs) != 1:
            raise InputError(f"{self.path}: the model has {len(inputs)} inputs "
                             f"({', '.join(i.name for i in inputs)}); fopt feeds one image batch")

    def _check_batch_impl(self, batch: np.ndarray) -> None:
        """The batch against the session's real input: rank, static dims, element type."""
        if not self._loaded or getattr(self, "session", None) is None:
            return
        shape, name = self.input_shape, self.input_name
        declared = "(" + ", ".join(str(d) if isinstance(d, int) else "?" for d in shape) + ")"
        if len(shape) != batch.ndim:
            raise ValidationError(f"{self.path.name}: its input {name!r} has rank {len(shape)} "
                                  f"{declared} but its card describes NCHW batches "
                                  f"{tuple(batch.shape)}; the card does not match this ONNX file")
        for axis, (want, got) in enumerate(zip(shape, batch.shape)):
            if isinstance(want, int) and want > 0 and want != got:
                what = ("batch size" if axis == 0 else "channels" if axis == 1
                        else "height" if axis == 2 else "width")
                raise ValidationError(f"{self.path.name}: expected input {declared} (its {what} is "
                                      f"fixed at {want}), got {tuple(batch.shape)}")
        if self.input_type != "tensor(float)":
            raise ValidationError(f"{self.path.name}: its input {name!r} is {self.input_type}, fopt "
                                  f"feeds float32 images (export with FP32 inputs, e.g. keep_io_types)")

    def _run_impl(self, prepared: np.ndarray):
        try:
            return self.session.run([self.output_name], {self.input_name: prepared})[0]
        except Exception as e:
            # onnxruntime's InvalidArgument carries a multi-line message: keep its first line
            if type(e).__module__.startswith("onnxruntime") and type(e).__name__ == "InvalidArgument":
                raise ValidationError(f"{self.path.name}: onnxruntime refused the batch "
                                      f"{tuple(np.shape(prepared))}: {first_line(e)}") from None
            raise

    def _close_impl(self) -> None:
        self.session = None
