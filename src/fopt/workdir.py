"""Folders fopt owns, and one writer at a time.

A folder fopt writes into (a run folder, a dataset folder) carries a ledger, ``.fopt-owned.json``,
listing every path fopt wrote there. fopt replaces or deletes only paths on that list, and only
when the user said so (``--force``, or a resume that redoes a stage). A folder that is not empty
and has no ledger belongs to somebody else: fopt refuses it in one line instead of writing
beside, over or instead of the user's files.

`exclusive` is an advisory lock (``O_CREAT | O_EXCL`` on a lock file beside the target) that
refuses a second fopt process writing the same folder or file; a lock left by a killed process
(its pid no longer runs on this host) is taken over.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
from pathlib import Path
from typing import Iterable, Iterator

from fopt.artifacts import (
    apply_umask_mode,
    pid_alive,
    sweep_stale_temps,
    write_json_atomic,
)
from fopt.errors import BusyError, InputError, OutputExistsError

LEDGER_NAME = ".fopt-owned.json"
LEDGER_SCHEMA = 1


class OwnedFolder:
    """A folder fopt made (or found empty), with the ledger of the paths fopt wrote in it."""

    def __init__(self, root: str | os.PathLike, paths: Iterable[str] = ()):
        self.root = Path(root)
        self.paths: set[str] = set(paths)

    # -- claiming -------------------------------------------------------------------------------
    @classmethod
    def claim(cls, root: str | os.PathLike, *, what: str = "output folder") -> "OwnedFolder":
        """Take `root` for fopt: create it, or adopt it when empty or already fopt's.

        A non-empty folder without a ledger is refused (`OutputExistsError`): its files are the
        user's, and nothing fopt does may touch them."""
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise OutputExistsError(f"{root} is a file, not a folder; choose a folder for the {what}")
        ledger = root / LEDGER_NAME
        if ledger.is_file():
            return cls(root, _read_ledger(ledger))
        if root.is_dir() and any(e.name != LOCK_NAME for e in root.iterdir()):
            raise OutputExistsError(f"{root} is not empty and was not made by fopt; choose a new or "
                                    f"empty folder for the {what} (fopt never writes among files it "
                                    f"did not make)")
        root.mkdir(parents=True, exist_ok=True)
        owned = cls(root)
        owned._save()
        return owned

    @classmethod
    def of(cls, root: str | os.PathLike) -> "OwnedFolder | None":
        """The ledger of `root` if fopt owns it, else None (nothing is created)."""
        ledger = Path(root) / LEDGER_NAME
        return cls(root, _read_ledger(ledger)) if ledger.is_file() else None

    # -- the ledger -----------------------------------------------------------------------------
    def _rel(self, path: str | os.PathLike) -> str:
        p = Path(path)
        p = p if p.is_absolute() else (Path.cwd() / p)
        try:
            return p.resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            raise InputError(f"{path} is outside {self.root}") from None

    def record(self, *paths: str | os.PathLike) -> None:
        """Note that fopt wrote `paths` (files or folders inside the root)."""
        new = {self._rel(p) for p in paths} - self.paths
        if new:
            self.paths |= new
            self._save()

    def owns(self, path: str | os.PathLike) -> bool:
        """True if fopt wrote `path`, or a folder above it."""
        rel = self._rel(path)
        parts = rel.split("/")
        return any("/".join(parts[:i]) in self.paths for i in range(1, len(parts) + 1))

    def replaceable(self, path: str | os.PathLike) -> bool:
        """True when fopt wrote `path` (so it may replace it), False when it does not exist yet;
        an existing path fopt did not write is refused (`OutputExistsError`): it is the user's."""
        p = Path(path)
        if not (p.exists() or p.is_symlink()):
            return False
        if not self.owns(p):
            raise OutputExistsError(f"{p} was not written by fopt; it is left as it is (move it away "
                                    f"or choose another folder)")
        return True

    def remove(self, path: str | os.PathLike) -> None:
        """Delete `path` if fopt wrote it; a path fopt did not write is refused, never deleted."""
        p = Path(path)
        if not (p.exists() or p.is_symlink()):
            self.paths.discard(self._rel(p))
            self._save()
            return
        self.replaceable(p)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
        rel = self._rel(p)
        self.paths = {q for q in self.paths if q != rel and not q.startswith(rel + "/")}
        self._save()

    def foreign(self) -> list[Path]:
        """Top-level entries of the root that fopt did not write (the user's files)."""
        out = []
        for entry in sorted(self.root.iterdir()):
            if entry.name in (LEDGER_NAME, LOCK_NAME) or entry.name.startswith(".fopt-"):
                continue
            if not self.owns(entry) and not any(q.startswith(entry.name + "/") for q in self.paths):
                out.append(entry)
        return out

    def _save(self) -> None:
        write_json_atomic(self.root / LEDGER_NAME,
                          {"schema": LEDGER_SCHEMA, "written_by": "fopt", "paths": sorted(self.paths)})


def _read_ledger(path: Path) -> list[str]:
    try:
        doc = json.loads(path.read_text())
        paths = doc["paths"]
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise TypeError("paths is not a list of strings")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: unreadable fopt ledger ({type(e).__name__}); fopt cannot tell its "
                         f"files from yours, so it changes nothing there (delete the ledger to start "
                         f"that folder afresh)") from None
    return [p for p in paths if p and not p.startswith("/") and ".." not in p.split("/")]


# ----------------------------------------------------------------------------- one writer

LOCK_NAME = ".fopt.lock"


def lock_path(target: str | os.PathLike, *, folder: bool | None = None) -> Path:
    """The lock file of a folder (inside it) or of a file (beside it). `folder` says which
    `target` is when it does not exist yet (default: a folder if it exists as one)."""
    target = Path(target)
    folder = target.is_dir() if folder is None else folder
    return target / LOCK_NAME if folder else target.with_name(f".{target.name}.lock")


@contextlib.contextmanager
def exclusive(target: str | os.PathLike, *, what: str | None = None,
              folder: bool | None = None) -> Iterator[Path]:
    """Hold the write lock of `target` for the block; a second holder gets `BusyError`.

    A folder's lock lives inside it, so the folder is created first: two processes about to
    create the same output folder then contend for the same lock."""
    path = lock_path(target, folder=folder)
    if folder:
        Path(target).mkdir(parents=True, exist_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = f"{os.getpid()}@{socket.gethostname()}"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if holder is not None and holder[1] == socket.gethostname() and not pid_alive(holder[0]):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()   # left by a killed process on this host: take it over
                continue
            who = f"pid {holder[0]} on {holder[1]}" if holder else "another process"
            raise BusyError(f"{what or target} is being written by another fopt process ({who}); "
                            f"wait for it, or remove {path} if that process is gone") from None
        with os.fdopen(fd, "w") as f:
            f.write(me)
        break
    else:  # pragma: no cover - only when another process re-creates the lock between our tries
        raise BusyError(f"{what or target} is being written by another fopt process")
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            if path.read_text() == me:
                path.unlink()


def _holder(path: Path) -> tuple[int, str] | None:
    try:
        pid, _, host = path.read_text().partition("@")
        return int(pid), host
    except (OSError, ValueError):
        return None


def cache_root() -> Path:
    """fopt's per-user cache: $FOPT_CACHE_DIR, else $XDG_CACHE_HOME/fopt, else ~/.cache/fopt
    (machine calibrations, ONNX Runtime's TensorRT engines)."""
    root = os.environ.get("FOPT_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "fopt"


def scratch_dir(parent: str | os.PathLike, kind: str) -> Path:
    """A new folder ``.fopt-<kind>.<pid>.<n>.tmp`` in `parent` to build an output in before it
    is renamed into place: on the same filesystem, with the mode the umask gives (mkdtemp's is
    0700). fopt's temporaries left in `parent` by killed runs are removed first."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    prefix = f".fopt-{kind}."
    sweep_stale_temps(parent)
    for n in range(1000):
        path = parent / f"{prefix}{os.getpid()}.{n}.tmp"
        try:
            path.mkdir()
        except FileExistsError:
            continue
        apply_umask_mode(path, folder=True)
        return path
    raise OSError(f"cannot make a scratch folder in {parent}")  # pragma: no cover
