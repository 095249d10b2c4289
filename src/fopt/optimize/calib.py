"""Calibration images for static INT8: real images only, at least `MIN_CALIB` of them.

`--calib-data` is either a dataset folder (``dataset.csv`` + ``mapping.json``: a class-balanced,
seeded sample of its train split through `fopt.data.calibration`) or a plain folder of images
(a seeded sample of every image under it). Both go through the evaluation transform of the
model's input spec, so calibration sees exactly what inference sees. Random tensors are never
used: a folder without enough images is an error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fopt.artifacts import InputSpec
from fopt.data.calibration import calibration_sample
from fopt.data.datasets import DatasetTable, load_image
from fopt.data.transforms import build_transform
from fopt.errors import DataError, InputError, UsageError

MIN_CALIB = 32          # fewer images give unstable activation ranges; refuse them
DEFAULT_CALIB = 256     # enough for stable min/max and histograms on CNN classifiers
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass
class CalibrationSet:
    images: np.ndarray           # float32 NCHW, normalised with the model's input spec
    info: dict[str, Any]         # recorded in the INT8 card
    labels: np.ndarray | None = None        # class indices of a dataset's images (None: a plain folder)
    class_names: list[str] | None = None    # the dataset's names of those indices


def validate_calib_size(n: int | None) -> None:
    if n is not None and n < MIN_CALIB:
        raise UsageError(f"--calib-size {n} is too small: static INT8 needs at least {MIN_CALIB} "
                         f"real images for stable activation ranges")


def load_calibration_set(source: str | os.PathLike, spec: InputSpec, n: int | None = None,
                     seed: int = 0, split: str = "train") -> CalibrationSet:
    """`n` real images (default: `DEFAULT_CALIB`, or all if fewer but >= MIN_CALIB exist)."""
    validate_calib_size(n)
    src = Path(source)
    if not src.exists():
        raise InputError(f"calibration data {src}: no such folder")
    if not src.is_dir():
        raise InputError(f"calibration data {src}: not a folder (pass a dataset folder or a folder of images)")
    if (src / "dataset.csv").is_file():
        return _from_dataset(src, spec, n, seed, split)
    return _from_image_folder(src, spec, n, seed)


def _resolve_count(available: int, n: int | None, where: str) -> int:
    if available < MIN_CALIB:
        raise DataError(f"{where} has {available} image(s); static INT8 calibration needs at least "
                        f"{MIN_CALIB} real images")
    if n is None:
        return min(DEFAULT_CALIB, available)
    if available < n:
        raise DataError(f"--calib-size {n} but {where} has only {available} image(s); "
                        f"pass --calib-size {available} or more data")
    return n


def _from_dataset(src: Path, spec: InputSpec, n: int | None, seed: int, split: str) -> CalibrationSet:
    table = DatasetTable.load(src)
    available = len(table.split(split))
    count = _resolve_count(available, n, f"the {split} split of {src}")
    images, labels = calibration_sample(table, count, spec.size, spec.mean, spec.std, split=split, seed=seed)
    return CalibrationSet(images, {"source": str(src.resolve()), "kind": "dataset", "split": split,
                                   "n": int(count), "available": int(available), "seed": seed,
                                   "sampling": "class-balanced"}, labels, list(table.class_names))


def _from_image_folder(src: Path, spec: InputSpec, n: int | None, seed: int) -> CalibrationSet:
    files = sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    count = _resolve_count(len(files), n, f"calibration folder {src}")
    rng = np.random.default_rng(seed)
    chosen = [files[i] for i in sorted(rng.choice(len(files), size=count, replace=False))]
    tf = build_transform(spec.size, spec.mean, spec.std, train=False)
    arrays = []
    for p in chosen:
        try:
            arrays.append(tf(load_image(p)).numpy())
        except Exception as e:  # PIL raises many types for broken files; name the file
            raise DataError(f"{p}: unreadable image ({type(e).__name__})") from None
    images = np.stack(arrays).astype(np.float32, copy=False)
    return CalibrationSet(images, {"source": str(src.resolve()), "kind": "image-folder", "split": None,
                                   "n": int(count), "available": len(files), "seed": seed,
                                   "sampling": "uniform"})


class ArrayCalibrationReader:
    """onnxruntime CalibrationDataReader over an in-memory batch, in mini-batches.

    Supports ``set_range`` / ``__len__`` so onnxruntime can calibrate in strides
    (``CalibStridedMinMax``) and merge the results, which keeps the memory of the augmented
    model's intermediate outputs bounded for large models.
    """

    def __init__(self, images: np.ndarray, input_name: str, batch_size: int = 4):
        self.input_name = input_name
        self.batches = [images[i:i + batch_size] for i in range(0, len(images), batch_size)]
        self.start, self.end = 0, len(self.batches)
        self._pos = 0

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end = start_index, min(end_index, len(self.batches))
        self._pos = self.start

    def get_next(self):
        if self._pos >= self.end:
            return None
        batch = self.batches[self._pos]
        self._pos += 1
        return {self.input_name: batch}

    def rewind(self) -> None:
        self._pos = self.start

    def stride(self, target: int = 2) -> int:
        """The largest divisor of len(self) that is <= target (onnxruntime requires a divisor)."""
        n = len(self)
        return max(d for d in range(1, max(1, min(target, n)) + 1) if n % d == 0)
