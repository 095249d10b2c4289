"""TensorRT engines from FP32, FP16 or QDQ-INT8 ONNX files (TensorRT 10 and 11).

Precision comes from the ONNX file, never from builder flags: the network is strongly typed
(TensorRT 10: ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``; TensorRT 11: always, the flag is
deprecated and the FP16/INT8 builder flags and the INT8 calibrator are gone). An FP16 ONNX file
gives an FP16 engine, a QDQ file with symmetric int8 Q/DQ gives an INT8 engine (explicit
quantization), an FP32 file an FP32 engine.

The engine gets one optimization profile for the dynamic batch axis (min/opt/max), a workspace
limit, and a timing cache file that later builds reuse. An engine only runs on the GPU model and
TensorRT version it was built with, so its card records both and the TensorRT runner refuses a
mismatch (`engine_compat_problems`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fopt.errors import DeviceUnavailable, InputError, MissingDependency, UsageError

INSTALL_HINT = "pip install fopt[gpu]"
DEFAULT_WORKSPACE_MB = 2048   # enough for every tactic of the registry CNNs at batch <= 64
MIN_TRT_MAJOR = 10


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


def network_flags(trt) -> tuple[int, bool]:
    """create_network() flags for a strongly typed network on this TensorRT; (flags, strongly_typed)."""
    if trt_major(trt.__version__) >= 11:
        return 0, True  # strong typing is the only mode; the flag is deprecated and ignored
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if flag is None:
        raise MissingDependency(f"TensorRT {trt.__version__} has no strongly typed networks; "
                                f"fopt needs TensorRT >= 10 ({INSTALL_HINT})")
    return 1 << int(flag), True


def profile_shapes(chw: tuple[int, ...], min_batch: int = 1, opt_batch: int = 1, max_batch: int = 64,
                   static_batch: int | None = None) -> dict[str, tuple[int, ...]]:
    """min/opt/max input shapes of the optimization profile for the batch axis.

    A model exported with a fixed batch only admits that batch; anything else is a usage error
    rather than a silently different profile.
    """
    for name, v in (("--min-batch", min_batch), ("--opt-batch", opt_batch), ("--max-batch", max_batch)):
        if not isinstance(v, int) or v < 1:
            raise UsageError(f"{name} must be a positive integer, got {v!r}")
    if not min_batch <= opt_batch <= max_batch:
        raise UsageError(f"need --min-batch <= --opt-batch <= --max-batch, got "
                         f"{min_batch}, {opt_batch}, {max_batch}")
    if any((not isinstance(d, int)) or d < 1 for d in chw):
        raise UsageError(f"the model input must have fixed channel/height/width, got {tuple(chw)}")
    if static_batch is not None and (min_batch, opt_batch, max_batch) != (static_batch,) * 3:
        raise UsageError(f"the ONNX model has a fixed batch of {static_batch}; pass --min-batch "
                         f"{static_batch} --opt-batch {static_batch} --max-batch {static_batch} "
                         f"or export with a dynamic batch")
    return {"min": (min_batch, *chw), "opt": (opt_batch, *chw), "max": (max_batch, *chw)}


def gpu_record(device: int = 0) -> dict[str, Any]:
    """Name, compute capability and memory of a CUDA device (what an engine is tied to)."""
    import torch

    props = torch.cuda.get_device_properties(device)
    return {"gpu_name": torch.cuda.get_device_name(device),
            "compute_capability": f"{props.major}.{props.minor}",
            "gpu_memory_gb": round(props.total_memory / 1024 ** 3, 1),
            "cuda": torch.version.cuda}


def runtime_record(trt, device: int = 0) -> dict[str, Any]:
    return {"tensorrt_version": trt.__version__, **gpu_record(device)}


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


def _parse_errors(parser) -> list[str]:
    out = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        out.append(" ".join(str(err.desc() if hasattr(err, "desc") else err).split()))
    return out


def onnx_to_engine(src: str | Path, dst: str | Path, *, min_batch: int = 1, opt_batch: int = 1,
                   max_batch: int = 64, workspace_mb: int = DEFAULT_WORKSPACE_MB,
                   timing_cache: str | Path | None = None, verbose: bool = False) -> dict[str, Any]:
    """Build a serialized TensorRT engine for `src` (precision from the file) into `dst`."""
    from fopt.artifacts import write_bytes_atomic
    from fopt.optimize.base import OptimizeError

    if workspace_mb < 1:
        raise UsageError(f"--workspace must be at least 1 MiB, got {workspace_mb}")
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags, strongly_typed = network_flags(trt)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(src)):
        errors = _parse_errors(parser) or ["unknown parser error"]
        raise OptimizeError(f"TensorRT cannot parse {Path(src).name}: {errors[0]}"
                            f"{f' (+{len(errors) - 1} more)' if len(errors) > 1 else ''}")
    if network.num_inputs != 1:
        raise OptimizeError(f"{Path(src).name}: expected one input, TensorRT sees {network.num_inputs}")
    inp = network.get_input(0)
    shape = tuple(int(d) for d in inp.shape)
    static_batch = shape[0] if shape[0] > 0 else None
    shapes = profile_shapes(shape[1:], min_batch, opt_batch, max_batch, static_batch)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    cache_path = Path(timing_cache) if timing_cache else None
    cache_bytes = cache_path.read_bytes() if cache_path and cache_path.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, False)  # ignore_mismatch=False: a cache from another GPU is rejected

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise OptimizeError(f"TensorRT could not build an engine from {Path(src).name} "
                            f"(see TensorRT's messages above; --workspace may be too small)")
    Path(dst).write_bytes(memoryview(serialized))
    if cache_path is not None:
        write_bytes_atomic(cache_path, bytes(memoryview(config.get_timing_cache().serialize())))
    outputs = [network.get_output(i) for i in range(network.num_outputs)]
    return {
        **runtime_record(trt),
        "strongly_typed": strongly_typed,
        "source_onnx": str(Path(src).resolve()),
        "profile": {"input": inp.name, **{k: list(v) for k, v in shapes.items()}},
        "workspace_mb": int(workspace_mb),
        "timing_cache": str(cache_path.resolve()) if cache_path else None,
        "timing_cache_reused": bool(cache_bytes),
        "io": {"input": {"name": inp.name, "dtype": str(inp.dtype)},
               "outputs": [{"name": o.name, "dtype": str(o.dtype)} for o in outputs]},
    }
