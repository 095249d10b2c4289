"""Helpers of the fault suite (imported by conftest.py and the tests): run fopt as a real process, kill it, validate what it left.

Everything runs inside the test's `tmp_path`: the subprocesses get ``cwd=tmp_path``,
``TMPDIR=tmp_path/systmp`` and ``FOPT_CACHE_DIR=tmp_path/cache`` so nothing is written elsewhere.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable

import pytest

HERE = Path(__file__).resolve().parent

# ----------------------------------------------------------------------------- processes


def fopt_env(base: Path) -> dict[str, str]:
    """Environment for a fopt subprocess confined to `base` (system temp and cache inside it)."""
    env = dict(os.environ)
    systmp = base / "systmp"
    systmp.mkdir(parents=True, exist_ok=True)
    env.update(TMPDIR=str(systmp), FOPT_CACHE_DIR=str(base / "cache"), OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONHASHSEED="0")
    env.pop("FOPT_DEBUG", None)
    return env


def fopt_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "fopt", *map(str, args)]


def run_fopt(args: Iterable[str], base: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(fopt_cmd(*args), cwd=base, env=fopt_env(base), capture_output=True,
                          text=True, timeout=timeout)


def timed_run(args: Iterable[str], base: Path, timeout: float = 300) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    res = run_fopt(args, base, timeout)
    return res, time.monotonic() - t0


def run_and_kill(args: Iterable[str], base: Path, delay: float) -> tuple[bool, str]:
    """Start fopt, SIGKILL it after `delay` seconds. Returns (was it killed, its stderr)."""
    p = subprocess.Popen(fopt_cmd(*args), cwd=base, env=fopt_env(base), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    try:
        p.wait(timeout=delay)
        killed = False
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
        p.wait()
        killed = True
    err = p.stderr.read() if p.stderr else ""
    if p.stderr:
        p.stderr.close()
    return killed, err


def kill_delays(duration: float, n: int, seed: int, lo: float = 0.12, hi: float = 0.97) -> list[float]:
    """`n` kill delays spread over [lo, hi] x duration: one seeded draw in each of n equal bins."""
    rng = random.Random(seed)
    width = (hi - lo) / n
    return [duration * (lo + (i + rng.random()) * width) for i in range(n)]


def one_error_line(text: str) -> str:
    """The single `error: ...` line of a refused command (asserts there is exactly one, no traceback)."""
    assert "Traceback" not in text, text
    lines = [ln for ln in text.splitlines() if ln.strip()]
    errs = [ln for ln in lines if ln.startswith("error:")]
    assert len(errs) == 1, f"expected exactly one 'error:' line, got:\n{text}"
    return errs[0]


# ----------------------------------------------------------------------------- temporaries

# Names fopt gives its temporaries (fopt.artifacts.atomic_path / replace_dir, synth/build temp
# folders, fopt.export.steps staging and probes) and its locks (fopt.workdir).
TEMP_PATTERNS = [
    re.compile(r"^\..+\.tmp$"),            # atomic_path: .NAME.XXXX.tmp; synth: .OUT.XXXX.tmp
    re.compile(r".*\.tmp$"),
    re.compile(r"^\..+\.old\.\d+$"),       # replace_dir: .NAME.old.PID
    re.compile(r"^\.fopt-export-"),        # export staging folders
    re.compile(r"^\.fopt-probe-"),         # export writability probe
    re.compile(r"^\.fopt\.lock$"),         # folder lock
    re.compile(r"^\..+\.lock$"),           # file lock
]


def is_temp_name(name: str) -> bool:
    return any(p.match(name) for p in TEMP_PATTERNS)


SUBPROCESS_DIRS = ("systmp", "cache")   # the subprocesses' own TMPDIR and FOPT_CACHE_DIR


def stray_temps(root: Path) -> list[str]:
    """Every path under `root` (recursively) whose name is one of fopt's temporary/lock names.

    The subprocesses' system temp and cache folders directly under `root` are not outputs and are
    left out (the kill tests check separately that a rerun adds nothing to the system temp)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == Path(root):
            dirnames[:] = [d for d in dirnames if d not in SUBPROCESS_DIRS]
        for name in dirnames + filenames:
            if is_temp_name(name):
                out.append(str(Path(dirpath, name).relative_to(root)))
    return sorted(out)


def _in_temp(rel: Path) -> bool:
    return any(is_temp_name(part) for part in rel.parts)


def visible_files(root: Path) -> set[str]:
    """Relative paths of the regular files under `root`, leaving out hidden names (temps, ledger)."""
    out = set()
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts):
            out.add(rel.as_posix())
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def hashes(root: Path) -> dict[str, str]:
    return {rel: sha256(root / rel) for rel in sorted(visible_files(root))}


# ----------------------------------------------------------------------------- validation

def check_csv(path: Path) -> list[list[str]]:
    text = path.read_text()
    assert text.endswith("\n"), f"{path}: last row is cut (no final newline)"
    rows = list(csv.reader(io.StringIO(text)))
    assert rows, f"{path}: empty csv"
    width = len(rows[0])
    bad = [i for i, r in enumerate(rows) if len(r) != width]
    assert not bad, f"{path}: rows {bad[:5]} have another number of fields than the header"
    return rows


def check_dataset_csv(path: Path) -> int:
    rows = check_csv(path)
    assert rows[0] == ["path", "label", "label_name", "split"], f"{path}: header {rows[0]}"
    for r in rows[1:]:
        assert r[1].isdigit() and r[3] in ("train", "val", "test"), f"{path}: bad row {r}"
    return len(rows) - 1


def check_synth_tree(root: Path) -> None:
    """A synthetic DeepFashion tree with synth.json must be complete: every annotation row's image."""
    img_list = root / "Anno" / "list_category_img.txt"
    part = root / "Eval" / "list_eval_partition.txt"
    for f in (img_list, part, root / "Anno" / "list_category_cloth.txt"):
        assert f.is_file(), f"{root}: synth.json present but {f.name} missing"
    lines = img_list.read_text().splitlines()
    n = int(lines[0])
    assert len(lines) == n + 2, f"{img_list}: says {n} images, has {len(lines) - 2} rows"
    plines = part.read_text().splitlines()
    assert int(plines[0]) == n and len(plines) == n + 2, f"{part}: incomplete"
    for ln in lines[2:]:
        rel = ln.split()[0]
        assert (root / "Img" / rel).is_file(), f"{root}: listed image {rel} is missing"


def validate_tree(root: Path) -> list[str]:
    """Load/parse completely every model/data file under `root`; returns what was checked.

    Files inside fopt's temporary folders and temporary files themselves are not outputs and are
    skipped (they are the subject of `stray_temps`). Raises AssertionError on a partial file.
    """
    checked = []
    if not root.exists():
        return checked
    files = sorted(p for p in root.rglob("*") if p.is_file() and not _in_temp(p.relative_to(root))
                   and p.relative_to(root).parts[0] not in SUBPROCESS_DIRS)
    for p in files:
        name = p.name
        try:
            if name.endswith(".onnx"):
                import onnx
                model = onnx.load(str(p))
                onnx.checker.check_model(model)
            elif name.endswith(".torchscript.pt"):
                import torch
                torch.jit.load(str(p), map_location="cpu")
            elif name.endswith(".pt"):
                import torch
                torch.load(str(p), map_location="cpu", weights_only=True)
            elif name.endswith(".json"):
                json.loads(p.read_text())
            elif name == "dataset.csv":
                check_dataset_csv(p)
            elif name.endswith(".csv"):
                check_csv(p)
            elif name.endswith((".png", ".jpg", ".jpeg")):
                from PIL import Image
                with Image.open(p) as im:
                    im.load()
            else:
                continue
        except AssertionError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure to load is the finding
            raise AssertionError(f"{p.relative_to(root)} looks like an output but does not load: "
                                 f"{type(e).__name__}: {e}") from None
        checked.append(p.relative_to(root).as_posix())
    # folder-level consistency
    for manifest in root.rglob("synth.json"):
        if not _in_temp(manifest.relative_to(root)):
            check_synth_tree(manifest.parent)
    for table in root.rglob("dataset.csv"):
        mapping = table.parent / "mapping.json"
        if not _in_temp(table.relative_to(root)) and mapping.is_file():
            n = check_dataset_csv(table)
            total = json.loads(mapping.read_text())["split_totals"]["total"]
            assert n == total, (f"{table.parent}: dataset.csv has {n} rows but mapping.json counts "
                                f"{total}: the two files come from different runs")
    check_cards(root)
    return checked


def check_cards(root: Path) -> None:
    """Every artifact beside its card: the card's sha256 must be the artifact's (same run)."""
    for card in root.rglob("*.json"):
        if _in_temp(card.relative_to(root)):
            continue
        art = card.with_name(card.name[:-len(".json")])
        if not art.is_file():
            continue
        doc = json.loads(card.read_text())
        if isinstance(doc, dict) and "sha256" in doc and "format" in doc:
            assert doc["sha256"] == sha256(art), (
                f"{art.relative_to(root)}: its card {card.name} describes another file (sha256 differs): "
                f"the artifact and its card were not replaced together")


# ----------------------------------------------------------------------------- disk full


class DiskFull:
    """Patch `open` so that, from the `fail_at`-th file opened for writing under `root` on, every
    write raises ENOSPC (after writing a first part of the data, as a full disk does).

    `fail_at=None` only counts the write-opens (to size the fault points of a test)."""

    def __init__(self, root: Path, fail_at: int | None):
        import builtins

        self.root = str(Path(root).resolve())
        self.fail_at = fail_at
        self.opens: list[str] = []
        self.fired = 0
        self._real = builtins.open

    def _under_root(self, file) -> bool:
        if isinstance(file, int):
            return False
        try:
            p = os.path.abspath(os.fsdecode(os.fspath(file)))
        except TypeError:
            return False
        return p == self.root or p.startswith(self.root + os.sep)

    def open(self, file, mode="r", *args, **kwargs):
        f = self._real(file, mode, *args, **kwargs)
        if any(c in mode for c in "wax+") and self._under_root(file):
            self.opens.append(os.fspath(file))
            if self.fail_at is not None and len(self.opens) >= self.fail_at:
                return _FullFile(f, self)
        return f

    def install(self, monkeypatch) -> "DiskFull":
        import builtins

        monkeypatch.setattr(builtins, "open", self.open)
        monkeypatch.setattr(io, "open", self.open)
        return self


class _FullFile:
    def __init__(self, f, owner: DiskFull):
        self._f = f
        self._owner = owner

    def write(self, data):
        self._owner.fired += 1
        part = data[: len(data) // 2]
        if part:
            self._f.write(part)
        raise OSError(errno.ENOSPC, "No space left on device")

    def writelines(self, lines):
        for ln in lines:
            self.write(ln)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self._f.close()
        except OSError:
            pass
        return False

    def __iter__(self):
        return iter(self._f)

    def __getattr__(self, name):
        return getattr(self._f, name)


def copy_artifact(src: Path, dst_dir: Path) -> Path:
    """Copy an artifact and its card into `dst_dir`."""
    import shutil

    dst_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst_dir / src.name)
    card = src.with_name(src.name + ".json")
    if card.exists():
        shutil.copy2(card, dst_dir / card.name)
    return dst_dir / src.name
