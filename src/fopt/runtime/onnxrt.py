"""ONNX Runtime: the one place sessions are made (`ort_session`), and its runner.

The runner uses the CPU provider, or for --device cuda the CUDA provider; the TensorRT provider
only when asked for (runner option ``tensorrt_provider=True``), and then with its engine and timing
caches on, so a second session does not rebuild its engines. On CUDA the runner binds device
buffers (IO binding): ``prepare`` copies the batch to the GPU once, the timed ``run_prepared``
runs on device memory (no host copies inside it), and the output stays on the GPU until
``to_numpy``. After loading, ``backend`` names the provider that actually runs
(``onnxruntime-cuda``, ``onnxruntime-tensorrt``; plain ``onnxruntime`` on the CPU), so a bench row
never calls TensorRT "onnxruntime". Runner option ``tf32=False`` turns TF32 off in the CUDA
provider (it is on by default there, as in torch): parity compares FP32 with FP32.

Everything else that needs a session (export's simplification check, the executed-graph view of
optimize, profiling and the calibration probes of bench) calls `ort_session`, so thread settings,
logging and profiling are set one way. ONNX Runtime is imported through
`fopt.runtime.ortflavour.import_onnxruntime`, which refuses a mixed CPU + GPU installation.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fopt.artifacts import ONNX_CARD_KEY, onnx_card_from_proto, read_card
from fopt.errors import (
    DeviceUnavailable,
    InputError,
    MissingDependency,
    UsageError,
    ValidationError,
    first_line,
)
from fopt.onnxgraph import check_external_data
from fopt.runtime.base import FOREIGN_HINT, RUNNERS, Runner
from fopt.runtime.ortflavour import active_flavour, import_onnxruntime
from fopt.workdir import cache_root

CPU = ("CPUExecutionProvider",)
# The row label of each provider that can run first in a session.
PROVIDER_LABELS = {"TensorrtExecutionProvider": "onnxruntime-tensorrt",
                   "CUDAExecutionProvider": "onnxruntime-cuda", "CPUExecutionProvider": "onnxruntime"}
# Where IO binding puts buffers for each fopt device (tests bind "cuda" to host memory).
IO_DEVICE = {"cuda": "cuda"}


def ort_trt_cache_dir() -> Path:
    """Engine and timing caches of ONNX Runtime's TensorRT provider, beside the calibrations."""
    return cache_root() / "ort-tensorrt"


def session_options(*, threads: int | None = None, profile_prefix: str | None = None,
                    optimized_model_path: str | None = None, **settings: Any):
    """SessionOptions: `threads` intra-op threads (and one inter-op thread), optional profiling
    into files starting with `profile_prefix`, the optimized graph saved to
    `optimized_model_path`, then any further `SessionOptions` attribute from `settings`."""
    ort = import_onnxruntime()

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


def ort_session(model: "str | os.PathLike | bytes", *, providers: Sequence[Any] = CPU, **options: Any):
    """An InferenceSession on a model path or serialized model; `options` go to `session_options`.
    `providers` are names or (name, provider options) pairs, first preferred."""
    ort = import_onnxruntime()

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


# onnxruntime's input type names -> numpy's
_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(uint8)": "uint8", "tensor(int8)": "int8", "tensor(int32)": "int32",
              "tensor(int64)": "int64"}


@RUNNERS.register("onnx")
class OnnxRuntimeRunner(Runner):
    format = "onnx"
    runtime = "onnxruntime"   # `backend` (the row label) is the property below: it names the provider

    def _read_card(self) -> dict[str, Any]:
        card = read_card(self.path, required=False) or embedded_card(self.path)
        if card is None:
            raise InputError(f"{self.path}: ONNX file has no fopt card (neither {self.path.name}.json "
                             f"beside it nor '{ONNX_CARD_KEY}' in its metadata_props){FOREIGN_HINT}")
        return card

    @property
    def backend(self) -> str:  # type: ignore[override]
        """The row label: the provider that runs first (`_load_impl` refuses a session where it
        did not start, so the label never names a provider that is not running)."""
        if self.device != "cuda":
            return PROVIDER_LABELS["CPUExecutionProvider"]
        first = "TensorrtExecutionProvider" if self.options.get("tensorrt_provider") else "CUDAExecutionProvider"
        return PROVIDER_LABELS[first]

    @property
    def execution(self) -> dict[str, Any]:
        """The device, and on CUDA once loaded the providers ONNX Runtime started (first preferred)."""
        out = {"device": self.device}
        if self.device == "cuda" and getattr(self, "active_providers", None):
            out["providers"] = list(self.active_providers)
        return out

    def providers(self) -> list[Any]:
        """The session's providers, first preferred: names, or (name, provider options) pairs.

        Options: ``tensorrt_provider`` (default False) puts ONNX Runtime's TensorRT provider first,
        with its engine and timing caches in `ort_trt_cache_dir`; ``tf32`` (default True) is the
        CUDA provider's ``use_tf32``."""
        ort = import_onnxruntime()

        if self.device == "cpu":
            return ["CPUExecutionProvider"]
        available = ort.get_available_providers()
        if "CUDAExecutionProvider" not in available:
            raise DeviceUnavailable(f"--device cuda needs onnxruntime-gpu; this is {active_flavour()}, "
                                    f"which offers {', '.join(available)}: pip uninstall -y onnxruntime, "
                                    f"then pip install -e '.[gpu]'")
        tf32 = bool(self.options.get("tf32", True))
        wanted: list[Any] = [("CUDAExecutionProvider", {"use_tf32": "1" if tf32 else "0"}), "CPUExecutionProvider"]
        if self.options.get("tensorrt_provider", False):
            if not tf32:
                raise UsageError("the TensorRT provider has no TF32 switch: compare FP32 without TF32 on "
                                 "the CUDA provider (tensorrt_provider=False)")
            if "TensorrtExecutionProvider" not in available:
                raise DeviceUnavailable(f"the TensorRT provider is not available in {active_flavour()} "
                                        f"(it offers {', '.join(available)}); pip install -e '.[gpu]'")
            cache = ort_trt_cache_dir()
            cache.mkdir(parents=True, exist_ok=True)
            # Without the engine cache every new session rebuilds every TensorRT engine (minutes).
            wanted.insert(0, ("TensorrtExecutionProvider", {
                "trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache),
                "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache)}))
        return wanted

    def session_options(self):
        return session_options(threads=self.threads)

    def _load_impl(self) -> None:
        check_external_data(self.path)   # before onnxruntime follows any external-data path
        try:
            providers = self.providers()
            self.session = ort_session(self.path, threads=self.threads, providers=providers)
        except (DeviceUnavailable, MissingDependency, UsageError):
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
        wanted = [p if isinstance(p, str) else p[0] for p in providers]
        if active[0] != wanted[0]:
            # e.g. the TensorRT provider could not start and ONNX Runtime went on without it
            self.session = None
            raise DeviceUnavailable(f"{self.path.name}: onnxruntime could not start the {wanted[0]} "
                                    f"(active: {', '.join(active)})")
        self.active_providers = list(active)
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
                                  f"{declared} but its card describes batches like "
                                  f"{tuple(batch.shape)}; the card does not match this ONNX file")
        for axis, (want, got) in enumerate(zip(shape, batch.shape)):
            if isinstance(want, int) and want > 0 and want != got:
                what = ("batch size" if axis == 0 else "channels" if axis == 1
                        else "height" if axis == 2 else "width")
                raise ValidationError(f"{self.path.name}: expected input {declared} (its {what} is "
                                      f"fixed at {want}), got {tuple(batch.shape)}")
        want_type = _ORT_TYPES.get(self.input_type, self.input_type)
        if want_type != batch.dtype.name:
            raise ValidationError(f"{self.path.name}: its input {name!r} is {want_type}, but the card says "
                                  f"{batch.dtype.name} (for a foreign model pass --dtype {want_type}; fopt's "
                                  f"own models take float32, e.g. exported with keep_io_types)")

    def _prepare_impl(self, batch: np.ndarray):
        """On CUDA: the batch copied to device memory and bound, with the output bound on the device
        too, so the timed run has no host copies (``h2d_ms`` is this copy); on the CPU the array."""
        where = IO_DEVICE.get(self.device)
        if where is None:
            return batch
        ort = import_onnxruntime()
        value = ort.OrtValue.ortvalue_from_numpy(batch, where, 0)
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self.input_name, value)
        binding.bind_output(self.output_name, where, 0)
        return _Bound(binding, value, tuple(batch.shape))

    def _run_impl(self, prepared):
        if isinstance(prepared, _Bound):
            try:
                self.session.run_with_iobinding(prepared.binding)
            except Exception as e:
                if type(e).__module__.startswith("onnxruntime") and type(e).__name__ == "InvalidArgument":
                    raise ValidationError(f"{self.path.name}: onnxruntime refused the batch "
                                          f"{prepared.shape}: {first_line(e)}") from None
                raise
            return prepared.binding.get_outputs()[0]   # an OrtValue, still on the device
        try:
            return self.session.run([self.output_name], {self.input_name: prepared})[0]
        except Exception as e:
            # onnxruntime's InvalidArgument carries a multi-line message: keep its first line
            if type(e).__module__.startswith("onnxruntime") and type(e).__name__ == "InvalidArgument":
                raise ValidationError(f"{self.path.name}: onnxruntime refused the batch "
                                      f"{tuple(np.shape(prepared))}: {first_line(e)}") from None
            raise

    def _to_numpy_impl(self, output: Any) -> np.ndarray:
        if hasattr(output, "numpy") and not isinstance(output, np.ndarray):   # an OrtValue
            output = output.numpy()
        return np.asarray(output, dtype=np.float32)

    def _close_impl(self) -> None:
        self.session = None


class _Bound:
    """A batch bound to a session: the IO binding and the device copy it points at (kept alive)."""

    def __init__(self, binding: Any, value: Any, shape: tuple[int, ...]):
        self.binding, self.value, self.shape = binding, value, shape
