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

The timing cache is an accelerator, never a reason to fail a build, and never silently wrong
(as Polygraphy's ``CreateConfig`` and ``EngineBytesFromNetwork`` treat it): a cache file TensorRT
cannot read (``create_timing_cache`` returns None, e.g. another TensorRT version) or refuses
(``set_timing_cache`` returns False, e.g. another GPU) is replaced by an empty cache, and
``get_timing_cache()`` returning None after the build leaves the file as it was. Each of these
prints one line and is listed in the card's ``timing_cache_notes``; ``timing_cache_reused`` is
true only when TensorRT accepted the old cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fopt.artifacts import write_bytes_atomic
from fopt.console import note
from fopt.errors import MissingDependency, UsageError
from fopt.optimize.base import OptimizeError
from fopt.runtime.tensorrt import (
    INSTALL_HINT,
    require_tensorrt,
    runtime_record,
    trt_major,
)

DEFAULT_WORKSPACE_MB = 2048   # enough for every tactic of the registry CNNs at batch <= 64


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


def _parse_errors(parser) -> list[str]:
    out = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        out.append(" ".join(str(err.desc() if hasattr(err, "desc") else err).split()))
    return out


def attach_timing_cache(config, path: Path, notes: list[str]) -> bool:
    """Give `config` the timing cache in `path` (or an empty one); True when the old one is used.

    A problem is appended to `notes` and printed; the build goes on with an empty cache, or with
    none when TensorRT cannot even make an empty one."""
    def problem(msg: str) -> None:
        notes.append(msg)
        note(f"note: {msg}")

    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data) if data else None
    if data and cache is None:
        problem(f"TensorRT cannot read the timing cache {path.name} (written by another TensorRT "
                f"version?); building with an empty one, which replaces it")
    elif cache is not None:
        if config.set_timing_cache(cache, False):  # ignore_mismatch=False: never use another GPU's timings
            return True
        problem(f"TensorRT refused the timing cache {path.name} (made on another GPU or TensorRT "
                f"version); building with an empty one, which replaces it")
    empty = config.create_timing_cache(b"")
    if empty is None or not config.set_timing_cache(empty, False):
        problem("TensorRT could not attach an empty timing cache; building without one")
    return False


def save_timing_cache(config, path: Path, notes: list[str]) -> None:
    """Write the build's timing cache to `path` atomically; a missing one leaves `path` as it was."""
    cache = config.get_timing_cache()
    if cache is None:
        msg = f"TensorRT returned no timing cache after the build; {path.name} was not updated"
        notes.append(msg)
        note(f"note: {msg}")
        return
    write_bytes_atomic(path, bytes(memoryview(cache.serialize())))


def onnx_to_engine(src: str | Path, dst: str | Path, *, min_batch: int = 1, opt_batch: int = 1,
                   max_batch: int = 64, workspace_mb: int = DEFAULT_WORKSPACE_MB,
                   timing_cache: str | Path | None = None, verbose: bool = False) -> dict[str, Any]:
    """Build a serialized TensorRT engine for `src` (precision from the file) into `dst`."""
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
    cache_notes: list[str] = []
    reused = attach_timing_cache(config, cache_path, cache_notes) if cache_path else False

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise OptimizeError(f"TensorRT could not build an engine from {Path(src).name} "
                            f"(see TensorRT's messages above; --workspace may be too small)")
    Path(dst).write_bytes(memoryview(serialized))
    if cache_path is not None:
        save_timing_cache(config, cache_path, cache_notes)
    outputs = [network.get_output(i) for i in range(network.num_outputs)]
    return {
        **runtime_record(trt),
        "strongly_typed": strongly_typed,
        "source_onnx": str(Path(src).resolve()),
        "profile": {"input": inp.name, **{k: list(v) for k, v in shapes.items()}},
        "workspace_mb": int(workspace_mb),
        "timing_cache": str(cache_path.resolve()) if cache_path else None,
        "timing_cache_reused": reused,
        "timing_cache_notes": cache_notes,
        "io": {"input": {"name": inp.name, "dtype": str(inp.dtype)},
               "outputs": [{"name": o.name, "dtype": str(o.dtype)} for o in outputs]},
    }
