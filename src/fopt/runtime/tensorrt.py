"""TensorRT runner: a serialized engine (``.engine``) on a CUDA GPU, TensorRT 10 and 11.

Device buffers and the stream are torch CUDA tensors and a torch CUDA stream (no pycuda): the
input is copied to the GPU by ``prepare`` (outside timed loops), ``run_prepared`` binds tensor
addresses, sets the input shape inside the engine's optimization profile and enqueues
``execute_async_v3`` on the runner's stream; the default stream waits on it, so reading the
output with ``.cpu()`` is ordered after inference. ``synchronize`` waits on both streams: the
copy and cast of ``prepare`` run on the current one.

An engine only runs on the GPU model and TensorRT version it was built with. Before
deserialising, the runner compares its card's ``tensorrt`` record (written by
``fopt optimize --tensorrt``) with this machine and refuses a mismatch in one line.
``import tensorrt`` happens in ``_load_impl`` only, so this module imports without it.

Trust: an engine can carry plugins, which are native code that runs when it is deserialized.
Load engines only from sources you trust; fopt says so in one line when it loads an engine it
did not build (`fopt.runtime.base.Runner.load`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fopt.errors import (
    DeviceUnavailable,
    InputError,
    MissingDependency,
    UsageError,
    ValidationError,
)
from fopt.runtime.base import RUNNERS, Runner, gpu_record

INSTALL_HINT = "pip install fopt[gpu]"
MIN_TRT_MAJOR = 10

# TensorRT DataType names -> torch dtype names (by name, so no enum differs across versions).
TRT_TO_TORCH = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8",
                "INT32": "int32", "INT64": "int64", "BOOL": "bool", "UINT8": "uint8"}


# ----------------------------------------------------------------------------- environment

def require_cuda() -> None:
    """A CUDA GPU visible to torch, else DeviceUnavailable (one line)."""
    try:
        import torch
    except ImportError:
        raise MissingDependency(f"TensorRT needs torch with CUDA ({INSTALL_HINT})") from None
    if not torch.cuda.is_available():
        raise DeviceUnavailable("TensorRT needs a CUDA GPU and none is available here "
                                "(torch.cuda.is_available() is False)")


def import_tensorrt():
    """The tensorrt module (>= 10), else MissingDependency with the install hint."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as e:  # OSError: the wheel is there but its CUDA libs are not
        raise MissingDependency(f"TensorRT is not installed or not loadable ({type(e).__name__}); "
                                f"{INSTALL_HINT}") from None
    if trt_major(getattr(trt, "__version__", "0")) < MIN_TRT_MAJOR:
        raise MissingDependency(f"TensorRT {trt.__version__} is too old: fopt needs TensorRT >= "
                                f"{MIN_TRT_MAJOR} (strongly typed networks); {INSTALL_HINT}")
    return trt


def require_tensorrt():
    """CUDA first (installing TensorRT does not help without a GPU), then the tensorrt module."""
    require_cuda()
    return import_tensorrt()


def tensorrt_unavailable_reason() -> str | None:
    """None if engines can be built here, else the one-line reason (for --all)."""
    try:
        require_tensorrt()
    except (DeviceUnavailable, MissingDependency) as e:
        return str(e)
    return None


def trt_major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return 0


def runtime_record(trt, device: int = 0) -> dict[str, Any]:
    """What an engine is tied to: the TensorRT version and the GPU (model, compute capability)."""
    gpu = gpu_record(device) or {}
    return {"tensorrt_version": trt.__version__, "gpu_name": gpu.get("name"),
            "compute_capability": gpu.get("capability"),
            "gpu_memory_gb": round(gpu.get("memory_bytes", 0) / 1024 ** 3, 1),
            "cuda": gpu.get("cuda_runtime")}


def engine_compat_problems(built: dict[str, Any], here: dict[str, Any]) -> list[str]:
    """Why an engine built under `built` (its card's ``tensorrt`` record) cannot run `here`."""
    problems = []
    if not built:
        return ["its card has no 'tensorrt' record (GPU and TensorRT version unknown)"]
    if built.get("tensorrt_version") != here.get("tensorrt_version"):
        problems.append(f"built with TensorRT {built.get('tensorrt_version')}, this machine has "
                        f"TensorRT {here.get('tensorrt_version')}")
    if built.get("compute_capability") != here.get("compute_capability") or \
            built.get("gpu_name") != here.get("gpu_name"):
        problems.append(f"built on {built.get('gpu_name')} (compute capability "
                        f"{built.get('compute_capability')}), this GPU is {here.get('gpu_name')} "
                        f"(compute capability {here.get('compute_capability')})")
    return problems


def check_engine_compat(path: str | Path, built: dict[str, Any], here: dict[str, Any]) -> None:
    problems = engine_compat_problems(built, here)
    if problems:
        source = (built or {}).get("source_onnx") or "MODEL.onnx"
        raise InputError(f"{path}: engine cannot run here: {'; '.join(problems)}; rebuild it on this "
                         f"machine with `fopt optimize {source} --tensorrt`")


# ----------------------------------------------------------------------------- runner

@RUNNERS.register("tensorrt")
class TensorRTRunner(Runner):
    backend = "tensorrt"
    runtime = "tensorrt"

    def __init__(self, path, device: str = "cuda", threads: int | None = None, **options: Any):
        if device == "cpu":
            raise UsageError(f"{path}: a TensorRT engine runs on a CUDA GPU only; use --device cuda "
                             f"(or auto)")
        super().__init__(path, device=device, threads=threads, **options)
        if self.device != "cuda":
            raise UsageError(f"{path}: a TensorRT engine runs on a CUDA GPU only")

    def _read_card(self) -> dict[str, Any]:
        card = super()._read_card()
        if card.get("format") != "tensorrt":
            raise InputError(f"{self.path}: its card says format {card.get('format')!r}, not a TensorRT engine")
        return card

    @property
    def build_record(self) -> dict[str, Any]:
        return dict(self.card.get("tensorrt") or {})

    def _load_impl(self) -> None:
        import torch

        trt = import_tensorrt()
        device_index = torch.cuda.current_device()
        check_engine_compat(self.path, self.build_record, runtime_record(trt, device_index))
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if engine is None:
            raise InputError(f"{self.path}: TensorRT could not deserialize the engine (corrupt, or "
                             f"built by another TensorRT version)")
        self.engine = engine
        self.context = engine.create_execution_context()
        if self.context is None:
            raise InputError(f"{self.path}: TensorRT could not create an execution context "
                             f"(out of GPU memory?)")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) < 1:
            raise InputError(f"{self.path}: expected one input and at least one output, the engine has "
                             f"{len(inputs)} input(s) and {len(outputs)} output(s)")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self._input_dtype = self._torch_dtype(engine.get_tensor_dtype(self.input_name))
        self._output_dtype = self._torch_dtype(engine.get_tensor_dtype(self.output_name))
        lo, _, hi = engine.get_tensor_profile_shape(self.input_name, 0)
        self.batch_range = (int(lo[0]), int(hi[0]))
        self.stream = torch.cuda.Stream()

    @staticmethod
    def _torch_dtype(trt_dtype):
        import torch

        name = getattr(trt_dtype, "name", str(trt_dtype).rsplit(".", 1)[-1])
        if name not in TRT_TO_TORCH:
            raise InputError(f"engine tensor type {name} is not supported by the fopt runner")
        return getattr(torch, TRT_TO_TORCH[name])

    def _prepare_impl(self, batch: np.ndarray):
        """Host batch -> device tensor; a batch below the profile's minimum is zero-padded.

        Returns (tensor, rows): the rows beyond `rows` are padding and dropped from the output.
        """
        import torch

        lo, hi = self.batch_range
        n = batch.shape[0]
        if n > hi:
            raise ValidationError(f"{self.path.name}: batch {n} is outside the engine's profile "
                                  f"({lo}..{hi}); rebuild with a larger --max-batch")
        if n < lo:
            batch = np.concatenate([batch, np.zeros((lo - n, *batch.shape[1:]), batch.dtype)])
        x = torch.from_numpy(batch).to("cuda", non_blocking=False)
        return x.to(self._input_dtype).contiguous(), n

    def _run_impl(self, prepared):
        import torch

        prepared, rows = prepared
        shape = tuple(prepared.shape)
        if not self.context.set_input_shape(self.input_name, shape):
            raise ValidationError(f"{self.path.name}: TensorRT rejected input shape {shape}")
        out_shape = tuple(int(d) for d in self.context.get_tensor_shape(self.output_name))
        # The input was written on the current stream; TensorRT reads it on ours.
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            out = torch.empty(out_shape, dtype=self._output_dtype, device="cuda")
        prepared.record_stream(self.stream)
        self.context.set_tensor_address(self.input_name, prepared.data_ptr())
        self.context.set_tensor_address(self.output_name, out.data_ptr())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError(f"{self.path.name}: TensorRT execute_async_v3 failed")
        torch.cuda.current_stream().wait_stream(self.stream)
        return out[:rows]

    def synchronize(self) -> None:
        """Wait for the input copy and cast (queued by ``prepare`` on the current stream) and for
        inference (on the runner's stream): ``h2d_ms`` ends only when the copy has landed."""
        import torch

        torch.cuda.current_stream().synchronize()
        if getattr(self, "stream", None) is not None:
            self.stream.synchronize()

    def _close_impl(self) -> None:
        self.context = None
        self.engine = None
        self._runtime = None
        self.stream = None
