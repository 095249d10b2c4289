"""Fixtures for the data tests: a tiny synthetic raw tree that each test may copy and damage."""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory) -> Path:
    """3 classes x 12 images, 32 px: a pristine DeepFashion-layout tree (do not modify)."""
    from fopt.data.synth import synthesize

    return synthesize(tmp_path_factory.mktemp("tiny") / "raw", classes=3, per_class=12, size=32, seed=3)


@pytest.fixture
def raw_copy(tiny_raw, tmp_path) -> Path:
    """A private copy of `tiny_raw` to damage."""
    dst = tmp_path / "raw"
    shutil.copytree(tiny_raw, dst)
    return dst


def _write_idx(path, arr, magic):
    header = struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


@pytest.fixture
def fake_fmnist(tmp_path):
    """A tiny Fashion-MNIST in torchvision's layout: 10 train and 3 test images per class."""
    d = tmp_path / "fm" / "FashionMNIST" / "raw"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for stem, n in (("train", 10), ("t10k", 3)):
        labels = np.repeat(np.arange(10), n)
        _write_idx(d / f"{stem}-images-idx3-ubyte.gz", rng.integers(0, 256, (len(labels), 28, 28)), 2051)
        _write_idx(d / f"{stem}-labels-idx1-ubyte.gz", labels, 2049)
    return tmp_path / "fm"


@pytest.fixture
def snapshot():
    """The `take_snapshot` function, as a fixture (test folders are not packages)."""
    return take_snapshot


@pytest.fixture
def rewrite():
    """The `rewrite_line` function, as a fixture."""
    return rewrite_line


def take_snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes); {} when the folder does not exist."""
    if not folder.exists():
        return {}
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def rewrite_line(path: Path, line_no: int, text: str) -> None:
    """Replace 1-based line `line_no` of a text file."""
    lines = path.read_text().splitlines()
    lines[line_no - 1] = text
    path.write_text("\n".join(lines) + "\n")
