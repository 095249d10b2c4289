"""One interface for everything that executes a model.

A `Runner` loads one artifact for one device, runs a batch, reports the input spec from the
artifact's card, and closes. Eval, export parity, optimize accuracy checks and bench all go through
runners; there is no second way to run a model. Backends live one per module and register
themselves in `RUNNERS` under the artifact format they run (the card's ``format`` field).

Public methods validate; backends implement the ``_*_impl`` methods (Polygraphy BaseRunner).
Timing-sensitive callers (bench) use ``prepare`` once and then ``run_prepared`` in the loop, so
host-side conversion is not inside the timed region unless they want it to be.

Trust: loading a TorchScript file runs the program stored in it, and a TensorRT engine is a
native plan (with any plugin libraries it names); neither is a data format like ONNX or a
weights-only checkpoint. When such a file was not written by fopt (no card, or a card whose
sha256 is not the file's), `Runner.load` prints one line saying so, once per file.
"""

from __future__ import annotations

import abc
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from fopt.artifacts import Feed, InputSpec, feed_of, image_spec, read_card, sha256_file
from fopt.console import note
from fopt.errors import DeviceUnavailable, InputError, UsageError, ValidationError
from fopt.registry import Registry


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' if available else 'cpu'; 'cuda' without a GPU is a clear error."""
    if device not in ("auto", "cpu", "cuda"):
        raise InputError(f"unknown device {device!r} (use auto, cpu or cuda)")
    if device == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if device == "auto":
        return "cpu"
    raise DeviceUnavailable("--device cuda requested but no CUDA GPU is available "
                            "(torch.cuda.is_available() is False)")


# Said wherever a file has no card: how to run a model fopt did not make.
FOREIGN_HINT = ("; for a model from elsewhere pass --input-shape/--preset/--classes as needed, or store "
                "them once with `fopt card FILE`")

# Formats whose loading executes what the file contains, and what a user should know about it.
CODE_FORMATS = {
    "torchscript": "a TorchScript file runs the program stored in it",
    "tensorrt": "a TensorRT engine is deserialized native code (plus any plugin it names)",
}
_TRUST_NOTED: set[str] = set()


def written_by_fopt(path: str | Path) -> bool:
    """True when `path` has fopt's sidecar card and that card's sha256 is the file's own (the
    card fopt writes records it); an embedded or hand-written card proves nothing about the file."""
    path = Path(path)
    sidecar = read_card(path, required=False)
    if not sidecar or not isinstance(sidecar.get("versions"), dict) or "fopt" not in sidecar["versions"]:
        return False
    if sidecar.get("kind") == "foreign":  # `fopt card` described it; fopt did not write it
        return False
    try:
        return sidecar.get("sha256") == sha256_file(path)
    except OSError:
        return False


def trust_note(path: str | Path, fmt: str) -> str | None:
    """The one-line note for a foreign code-bearing file, printed once per file; else None."""
    what = CODE_FORMATS.get(fmt)
    key = str(Path(path).resolve())
    if what is None or key in _TRUST_NOTED or written_by_fopt(path):
        return None
    _TRUST_NOTED.add(key)
    line = (f"note: {path} was not written by fopt (no fopt card with its sha256): {what} with your "
            f"permissions; load only files from a source you trust")
    note(line)
    return line


class Runner(abc.ABC):
    """Runs one artifact. Use as a context manager, or call load()/close()."""

    format: ClassVar[str] = ""
    backend: ClassVar[str] = ""   # human/bench name, e.g. "torch-eager", "onnxruntime"
    runtime: ClassVar[str] = ""   # one of RUNTIMES: what a bench row and a recommendation name

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None,
                 card: dict[str, Any] | None = None, **options: Any):
        """`card` replaces the file's own (a foreign model's card from `fopt.describe`)."""
        self.path = Path(path)
        self.device = resolve_device(device)
        self.threads = threads
        self.options = options
        self.card: dict[str, Any] = card if card is not None else self._read_card()
        self._loaded = False
        self.last_infer_s: float | None = None

    # -- metadata ------------------------------------------------------------------------------
    def _read_card(self) -> dict[str, Any]:
        """The sidecar card; backends override to read an embedded copy when the sidecar is gone."""
        card = read_card(self.path, required=False)
        if card is None:
            raise InputError(f"{self.path}: no artifact card ({self.path.name}.json) beside it; "
                             f"fopt needs it to know the input size and normalisation{FOREIGN_HINT}")
        return card

    @property
    def input_spec(self) -> InputSpec:
        """Normalised NCHW images: size, channels, mean, std (an error names what a card lacks)."""
        return image_spec(self.card, self.path)

    @property
    def feed(self) -> Feed:
        """The input tensor's shape and element type (all timing needs)."""
        return feed_of(self.card)

    @property
    def class_names(self) -> list[str] | None:
        """Names in output-index order; None for a foreign model whose classes nobody stated."""
        names = self.card.get("class_names")
        return None if names is None else list(names)

    @property
    def precision(self) -> str:
        return self.card.get("precision", "fp32")

    @property
    def execution(self) -> dict[str, Any]:
        """What the runtime actually ran with (device, precision it computed in), once loaded;
        backends that can ask their runtime override it."""
        return {"device": self.device}


    # -- lifecycle -----------------------------------------------------------------------------
    def load(self) -> "Runner":
        if not self._loaded:
            trust_note(self.path, self.format or self.card.get("format", ""))
            self._load_impl()
            self._loaded = True
        return self

    def close(self) -> None:
        if self._loaded:
            self._close_impl()
            self._loaded = False

    def __enter__(self) -> "Runner":
        return self.load()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- inference -----------------------------------------------------------------------------
    def validate_batch(self, batch: Any) -> np.ndarray:
        """The batch as contiguous float32 NCHW, checked against the card's input spec and then
        against what the loaded model itself declares (`_check_batch_impl`); a mismatch is a
        one-line ValidationError, never the backend's own error from deep inside a run."""
        arr = batch.detach().cpu().numpy() if hasattr(batch, "detach") else np.asarray(batch)
        feed = self.feed
        want = "(" + ", ".join("N" if i == 0 else "?" if d is None else str(d)
                               for i, d in enumerate(feed.shape)) + ")"
        images = bool(self.card.get("input_spec"))  # NCHW images: height and width may vary
        fixed = [(i, d) for i, d in enumerate(feed.shape) if i > 0 and d is not None and (i == 1 or not images)]
        if arr.ndim != len(feed.shape) or any(arr.shape[i] != d for i, d in fixed):
            raise ValidationError(f"{self.path.name}: expected input {want}, got {tuple(arr.shape)}")
        if arr.shape[0] < 1:
            raise ValidationError(f"{self.path.name}: empty batch")
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise ValidationError(f"{self.path.name}: expected a numeric batch, got dtype {arr.dtype}")
        arr = np.ascontiguousarray(arr, dtype=feed.dtype)
        self._check_batch_impl(arr)
        return arr

    def prepare(self, batch: Any) -> Any:
        """Convert a host batch to what the backend consumes (done outside timed loops)."""
        self.load()
        return self._prepare_impl(self.validate_batch(batch))

    def run_prepared(self, prepared: Any) -> Any:
        """Run a prepared batch; returns the backend-native output (no host copy forced)."""
        return self._run_impl(prepared)

    def to_numpy(self, output: Any) -> np.ndarray:
        return self._to_numpy_impl(output)

    def infer(self, batch: Any) -> np.ndarray:
        """Logits (N, num_classes) float32 for a normalised NCHW batch."""
        prepared = self.prepare(batch)
        t0 = time.perf_counter()
        out = self.to_numpy(self.run_prepared(prepared))
        self.last_infer_s = time.perf_counter() - t0
        return out

    def synchronize(self) -> None:
        """Wait for queued device work (CUDA backends override)."""

    # -- backend hooks -------------------------------------------------------------------------
    @abc.abstractmethod
    def _load_impl(self) -> None: ...

    def _close_impl(self) -> None:
        pass

    def _check_batch_impl(self, batch: np.ndarray) -> None:
        """Compare `batch` with the loaded model's own declared input (backends that know it)."""

    def _prepare_impl(self, batch: np.ndarray) -> Any:
        return batch

    @abc.abstractmethod
    def _run_impl(self, prepared: Any) -> Any: ...

    def _to_numpy_impl(self, output: Any) -> np.ndarray:
        if hasattr(output, "detach"):
            output = output.detach().float().cpu().numpy()
        return np.asarray(output, dtype=np.float32)


RUNNERS: Registry[type[Runner]] = Registry("runner format")   # each format's default runtime

# The runtimes a deployable artifact can be paired with (the recommendation ranks such pairs).
RUNTIMES = ("onnxruntime", "openvino", "torch", "tensorrt")
# Runners of a format under a runtime other than its default, keyed (format, runtime).
_OTHER_RUNTIMES: dict[tuple[str, str], type[Runner]] = {}


def register_runtime(fmt: str, runtime: str):
    """Register a runner for `fmt` under a runtime that is not the format's default one."""
    def deco(cls: type[Runner]) -> type[Runner]:
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {runtime!r}")
        if (fmt, runtime) in _OTHER_RUNTIMES:
            raise ValueError(f"a {runtime} runner for {fmt!r} is already registered")
        _OTHER_RUNTIMES[(fmt, runtime)] = cls
        return cls
    return deco


def runtimes_for(fmt: str) -> list[str]:
    """Every runtime that can run format `fmt`, its default first."""
    return [RUNNERS.get(fmt).runtime] + [rt for (f, rt) in _OTHER_RUNTIMES if f == fmt]


def runner_class(fmt: str, runtime: str | None = None) -> type[Runner]:
    """The runner of `fmt` under `runtime` (None: the format's default runtime)."""
    default = RUNNERS.get(fmt)
    if runtime is None or runtime == default.runtime:
        return default
    if runtime not in RUNTIMES:
        raise UsageError(f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")
    cls = _OTHER_RUNTIMES.get((fmt, runtime))
    if cls is None:
        raise UsageError(f"runtime {runtime} cannot run {fmt} artifacts; {fmt} runs on "
                         f"{', '.join(runtimes_for(fmt))}")
    return cls


def gpu_record(device: int = 0, load_torch: bool = True) -> dict[str, Any] | None:
    """Name, compute capability, memory and driver of a CUDA device, or None without a GPU.

    With ``load_torch=False`` it answers None unless torch is already imported (a CPU-only
    record must not pay for importing torch)."""
    if not load_torch and "torch" not in sys.modules:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(device)
    rec: dict[str, Any] = {"name": props.name, "memory_bytes": int(props.total_memory),
                           "capability": f"{props.major}.{props.minor}",
                           "count": torch.cuda.device_count(), "cuda_runtime": torch.version.cuda}
    rec["driver"] = _nvidia_driver()
    return rec


def _nvidia_driver() -> str | None:
    try:
        return Path("/proc/driver/nvidia/version").read_text().split("Kernel Module", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def cpu_info() -> dict[str, str]:
    """The first processor block of /proc/cpuinfo as a dict (empty where it does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    out: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            out.setdefault(k.strip(), v.strip())
    return out


def cpu_flags() -> set[str]:
    """This CPU's feature flags (x86 ``flags``, ARM ``Features``); empty where unknown."""
    info = cpu_info()
    return set((info.get("flags") or info.get("Features") or "").split())
