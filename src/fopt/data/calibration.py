"""Real-image batches for calibration (static INT8, TensorRT) and for feeding runners.

Both use the eval preset of `fopt.data.transforms` so the numbers a runner sees are exactly
what the model saw in evaluation. Calibration never uses random tensors: `calibration_batch`
needs `n` real images and says how many exist when there are fewer.
"""

from __future__ import annotations

import os
from typing import Iterator, Sequence

import numpy as np

from fopt.data.datasets import DatasetTable, load_image
from fopt.data.transforms import DEFAULT_MEAN, DEFAULT_STD, build_transform
from fopt.errors import DataError, UsageError


def sample_balanced(labels: Sequence[int], n: int, seed: int = 0) -> list[int]:
    """`n` row indices drawn round-robin over classes (each class in a seeded random order).

    Classes take turns, so every class gets n // k or n // k + 1 rows while it has rows left;
    a class that runs out leaves its turns to the others. Deterministic for a seed.
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    per_class = [rng.permutation(np.flatnonzero(labels == c)).tolist() for c in np.unique(labels)]
    out: list[int] = []
    depth = 0
    while len(out) < n:
        took = False
        for rows in per_class:
            if depth < len(rows):
                out.append(rows[depth])
                took = True
                if len(out) == n:
                    break
        if not took:
            break
        depth += 1
    return out


def _stack(table: DatasetTable, rel_paths: Sequence[str], img_size: int, mean, std) -> np.ndarray:
    tf = build_transform(img_size, mean, std, train=False)
    arrays = [tf(load_image(table.root / p)).numpy() for p in rel_paths]
    return np.stack(arrays).astype(np.float32, copy=False)


def calibration_batch(dataset_dir: str | os.PathLike | DatasetTable, n: int, img_size: int,
                      mean: Sequence[float] = DEFAULT_MEAN, std: Sequence[float] = DEFAULT_STD,
                      split: str = "train", seed: int = 0) -> np.ndarray:
    """float32 NCHW array of `n` real images of `split` (eval transform), class-balanced, seeded."""
    return calibration_sample(dataset_dir, n, img_size, mean, std, split, seed)[0]


def calibration_sample(dataset_dir: str | os.PathLike | DatasetTable, n: int, img_size: int,
                       mean: Sequence[float] = DEFAULT_MEAN, std: Sequence[float] = DEFAULT_STD,
                       split: str = "train", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`calibration_batch`'s images and their labels (the table's class indices)."""
    if n < 1:
        raise UsageError(f"the calibration sample size must be at least 1, got {n}")
    table = dataset_dir if isinstance(dataset_dir, DatasetTable) else DatasetTable.load(dataset_dir)
    rows = table.split(split)
    if len(rows) < n:
        raise DataError(f"calibration needs {n} images but the {split} split of {table.dir} has only "
                        f"{len(rows)}; pass a smaller calibration size or use a larger dataset")
    idx = sample_balanced(rows["label"].tolist(), n, seed)
    labels = rows["label"].iloc[idx].to_numpy(dtype=np.int64)
    return _stack(table, rows["path"].iloc[idx].tolist(), img_size, mean, std), labels


def iter_batches(dataset_dir: str | os.PathLike | DatasetTable, split: str, img_size: int,
                 mean: Sequence[float] = DEFAULT_MEAN, std: Sequence[float] = DEFAULT_STD,
                 batch_size: int = 32, limit: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (float32 NCHW batch, int64 labels) over `split` in table order, eval transform.

    `limit` stops after that many images (the first ones, so results are comparable across
    runners). The last batch may be smaller.
    """
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    table = dataset_dir if isinstance(dataset_dir, DatasetTable) else DatasetTable.load(dataset_dir)
    rows = table.split(split)
    if limit is not None:
        rows = rows.iloc[:limit]
    if len(rows) == 0:
        raise DataError(f"the {split} split of {table.dir} is empty")
    paths = rows["path"].tolist()
    labels = rows["label"].to_numpy(dtype=np.int64)
    for start in range(0, len(paths), batch_size):
        stop = start + batch_size
        yield _stack(table, paths[start:stop], img_size, mean, std), labels[start:stop]
