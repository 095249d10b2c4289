"""Parity: an exported artifact against its checkpoint, through the runtime runners.

Both sides run through `fopt.runtime.base.open_runner` (no second way to run a model) on the same
inputs: real images of the checkpoint's dataset (its card's ``config.data``, eval transform) when
that folder is reachable, seeded random tensors otherwise (the report says which). With a dynamic
batch axis the check runs at batch 1 and at a larger batch, which proves the axis is really dynamic.

Pass criterion, per image: every logit within ``atol + rtol * max|checkpoint logits of that image|``
of the checkpoint's. Like numpy ``allclose`` but with the relative part taken from the image's
largest logit rather than element-wise: an fp32 export reorders sums, which moves every logit by
about the same absolute amount (~1e-5 of the logit scale, more in deep nets: ResNet-50 ~1e-4),
so the logits nearest zero fail an element-wise relative test while nothing is wrong; a real
conversion bug moves logits by a large share of their scale. Reported beside it: ``max_abs_diff``;
``max_rel_diff`` = the worst image's max abs diff / its largest |logit| (what rtol bounds); the
lowest per-image cosine similarity of the logit vectors; top-1 agreement (share of images whose
arg-max class matches).
A different output shape is always fatal (`ShapeMismatch`); a result over tolerance raises
`ToleranceExceeded` unless the caller asks for the report only.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from fopt.data.calibration import iter_batches
from fopt.data.datasets import DatasetTable
from fopt.errors import DataError, InputError, ValidationError
from fopt.runtime import open_runner

DEFAULT_ATOL = 1e-4   # fp32 CPU exports differ by ~1e-6 on O(1) logits; 1e-4 leaves room for other kernels
DEFAULT_RTOL = 1e-3
PARITY_BATCH = 8      # the "larger batch": enough to catch a batch axis frozen at 1
SPLITS = ("val", "test", "train")  # where parity images come from, in order of preference


class ShapeMismatch(ValidationError):
    """The artifact's output shape differs from the checkpoint's: always fatal."""


class ToleranceExceeded(ValidationError):
    """The artifact's outputs differ from the checkpoint's by more than the tolerances."""
    def __init__(self, message: str, report: "ParityReport"):
        super().__init__(message)
        self.report = report


# ----------------------------------------------------------------------------- inputs

@dataclass
class ParityInputs:
    """The batches parity runs on, where they came from, and the reference outputs once computed."""
    batches: list[np.ndarray]
    batch_sizes: tuple[int, ...]
    img_size: int
    source: str                      # human description: "9 real images (val split of DIR)"
    real: bool
    reference: dict[str, list[np.ndarray]] = field(default_factory=dict)  # key: checkpoint|device

    @property
    def kind(self) -> str:
        return "real" if self.real else "random"


def _dataset_dir(card: dict[str, Any]) -> str | None:
    data = (card.get("config") or {}).get("data") or card.get("dataset")
    if isinstance(data, dict):
        data = data.get("dir") or data.get("path")
    return str(data) if data else None


def parity_inputs(card: dict[str, Any], spec, batch_sizes: Sequence[int], seed: int = 0) -> ParityInputs:
    """Batches of sizes `batch_sizes` for a model fed as `spec` (an InputSpec).

    Real images when the card's dataset folder is reachable and a split has enough images (the
    first ones of the split, so runs are comparable); else seeded standard-normal tensors, whose
    scale matches normalised images.
    """
    n = max(batch_sizes)
    data = _dataset_dir(card)
    why = "the checkpoint records no dataset"
    if data:
        why = f"dataset {data} is not reachable"
        if Path(data).is_dir():
            try:
                found = _real_images(data, spec, n)
            except (DataError, InputError, OSError) as e:
                found, why = None, f"dataset {data} is unusable ({' '.join(str(e).split())[:120]})"
            if found is not None:
                images, split = found
                return ParityInputs([images[:b] for b in batch_sizes], tuple(batch_sizes), spec.size,
                                    f"{n} real images ({split} split of {data})", True)
            if why.startswith("dataset") and "unusable" not in why:
                why = f"no split of {data} has {n} images"
    rng = np.random.default_rng(seed)
    full = rng.standard_normal((n, spec.channels, spec.size, spec.size)).astype(np.float32)
    return ParityInputs([full[:b] for b in batch_sizes], tuple(batch_sizes), spec.size,
                        f"{n} random inputs ({why})", False)


def _real_images(data: str, spec, n: int) -> tuple[np.ndarray, str] | None:
    table = DatasetTable.load(data)
    for split in SPLITS:
        if len(table.split(split)) >= n:
            images, _ = next(iter_batches(table, split, spec.size, spec.mean, spec.std, batch_size=n, limit=n))
            return images, split
    return None


# ----------------------------------------------------------------------------- comparison

@dataclass
class BatchComparison:
    batch: int
    max_abs_diff: float
    max_rel_diff: float
    cosine_similarity: float   # lowest over the batch's images
    top1_agreement: float
    within_tolerance: bool

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def compare_outputs(actual: np.ndarray, reference: np.ndarray, *, atol: float, rtol: float,
                    label: str = "artifact") -> BatchComparison:
    """Compare one batch of logits; a shape difference raises `ShapeMismatch`."""
    actual = np.asarray(actual, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if actual.shape != reference.shape:
        raise ShapeMismatch(f"{label}: output shape {tuple(actual.shape)} differs from the "
                            f"checkpoint's {tuple(reference.shape)}")
    if not np.all(np.isfinite(actual)):
        return BatchComparison(int(reference.shape[0]), float("inf"), float("inf"), float("nan"), 0.0, False)
    a2 = actual.reshape(len(actual), -1)
    r2 = reference.reshape(len(reference), -1)
    diff = np.abs(a2 - r2)
    max_abs = float(diff.max()) if diff.size else 0.0
    row_diff = diff.max(axis=1) if diff.size else np.zeros(len(r2))
    row_scale = np.abs(r2).max(axis=1) if r2.size else np.zeros(len(r2))
    with np.errstate(divide="ignore", invalid="ignore"):
        row_rel = np.where(row_scale > 0, row_diff / np.where(row_scale > 0, row_scale, 1.0),
                           np.where(row_diff == 0, 0.0, np.inf))
    max_rel = float(row_rel.max()) if len(row_rel) else 0.0
    norms = np.linalg.norm(a2, axis=1) * np.linalg.norm(r2, axis=1)
    dots = np.sum(a2 * r2, axis=1)
    cos = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.where(np.all(a2 == r2, axis=1), 1.0, 0.0))
    agree = float(np.mean(a2.argmax(axis=1) == r2.argmax(axis=1))) if len(a2) else 1.0
    ok = bool(np.all(diff <= atol + rtol * row_scale[:, None]))
    return BatchComparison(int(reference.shape[0]), max_abs, max_rel, float(cos.min()), agree, ok)


@dataclass
class ParityReport:
    """Truthy when every batch is within tolerance."""
    artifact: str
    reference: str
    atol: float
    rtol: float
    inputs: str
    inputs_kind: str
    device: str
    batches: list[BatchComparison]

    def __bool__(self) -> bool:
        return self.passed

    @property
    def passed(self) -> bool:
        return all(b.within_tolerance for b in self.batches)

    @property
    def max_abs_diff(self) -> float:
        return max(b.max_abs_diff for b in self.batches)

    @property
    def max_rel_diff(self) -> float:
        return max(b.max_rel_diff for b in self.batches)

    @property
    def cosine_similarity(self) -> float:
        return min(b.cosine_similarity for b in self.batches)

    @property
    def top1_agreement(self) -> float:
        n = sum(b.batch for b in self.batches)
        return sum(b.top1_agreement * b.batch for b in self.batches) / n

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "atol": self.atol, "rtol": self.rtol,
                "max_abs_diff": self.max_abs_diff, "max_rel_diff": self.max_rel_diff,
                "cosine_similarity": self.cosine_similarity, "top1_agreement": self.top1_agreement,
                "batch_sizes": [b.batch for b in self.batches], "inputs": self.inputs,
                "inputs_kind": self.inputs_kind, "device": self.device,
                "per_batch": [b.to_dict() for b in self.batches]}

    def line(self) -> str:
        verdict = "parity ok" if self.passed else "parity FAILED"
        return (f"{verdict}: max abs diff {self.max_abs_diff:.3g}, rel {self.max_rel_diff:.3g}, "
                f"cosine {self.cosine_similarity:.6f}, top-1 agreement {self.top1_agreement:.1%} "
                f"at batch {'/'.join(str(b.batch) for b in self.batches)} on {self.inputs} "
                f"(atol {self.atol:g}, rtol {self.rtol:g})")


@contextlib.contextmanager
def _strict_fp32() -> Iterator[None]:
    # On Ampere and later GPUs torch runs fp32 convolutions in TF32 by default (10-bit mantissa),
    # which moves logits by ~1e-3: an fp32 parity check must compare real fp32 arithmetic. ONNX
    # Runtime's CUDA provider has its own switch (use_tf32, on by default): `_run` turns it off.
    import torch

    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _run(path: str | os.PathLike, batches: list[np.ndarray], device: str) -> list[np.ndarray]:
    # tf32=False: ONNX Runtime's CUDA provider without TF32, and never its TensorRT provider
    # (which builds FP32 engines with TF32): both sides of the comparison compute in FP32.
    with _strict_fp32(), open_runner(path, device=device, tf32=False) as runner:
        return [runner.infer(b) for b in batches]


def reference_outputs(reference: str | os.PathLike, inputs: ParityInputs, device: str) -> list[np.ndarray]:
    """The checkpoint's outputs on `inputs`, computed once per checkpoint and device."""
    key = f"{Path(reference).resolve()}|{device}"
    if key not in inputs.reference:
        inputs.reference[key] = _run(reference, inputs.batches, device)
    return inputs.reference[key]


def validate_artifact(artifact: str | os.PathLike, reference: str | os.PathLike, *,
                      inputs: ParityInputs | None = None, atol: float = DEFAULT_ATOL,
                      rtol: float = DEFAULT_RTOL, device: str = "cpu",
                      batch_sizes: Sequence[int] = (1, PARITY_BATCH), check: bool = True) -> ParityReport:
    """Run `artifact` and its `reference` checkpoint on the same inputs and compare them.

    `inputs` default to `parity_inputs` of the reference's card at the artifact's input size.
    Raises `ShapeMismatch` on a shape difference and, when `check`, `ToleranceExceeded` when
    over tolerance (the report is attached); otherwise returns the report (truthy = pass).
    """

    artifact = Path(artifact)
    if inputs is None:
        with open_runner(reference, device="cpu") as ref_runner:
            ref_card = ref_runner.card
        with open_runner(artifact, device="cpu") as art_runner:
            spec = art_runner.input_spec
        inputs = parity_inputs(ref_card, spec, batch_sizes)
    ref = reference_outputs(reference, inputs, device)
    try:
        got = _run(artifact, inputs.batches, device)
    except ValidationError as e:
        raise ShapeMismatch(f"{artifact.name}: {e}") from e
    batches = [compare_outputs(g, r, atol=atol, rtol=rtol, label=artifact.name) for g, r in zip(got, ref)]
    report = ParityReport(str(artifact), str(reference), atol, rtol, inputs.source, inputs.kind,
                          device, batches)
    if check and not report:
        raise ToleranceExceeded(f"{artifact.name} differs from {Path(reference).name}: "
                                f"{report.line()}; the file was not kept", report)
    return report
