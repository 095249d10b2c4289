"""Fixtures for the data tests: a tiny synthetic raw tree that each test may copy and damage."""

from __future__ import annotations

import shutil
from pathlib import Path

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
