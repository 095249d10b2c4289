"""What `--force` means for `fopt data build` and `fopt data synth`: one rule for both.

OUT is claimed with `fopt.workdir.OwnedFolder`: a non-empty folder fopt did not make is refused,
so none of the user's files is ever written over or deleted. In a folder fopt owns, an output an
earlier run wrote is replaced only with `--force`, and only after checking that it holds nothing
but the files fopt writes there (a file the user dropped inside it stops the run, in one line).
The write lock (`fopt.workdir.exclusive`) refuses a second writer of the same OUT.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Iterator, Mapping

from fopt.errors import OutputExistsError
from fopt.workdir import OwnedFolder, exclusive

FORCE_HELP = "Replace the outputs an earlier fopt run wrote in OUT (never files fopt did not write)."


def _stray_files(path: Path, root: Path, pattern: re.Pattern | None) -> list[Path]:
    """Files under the output `path` whose path relative to `root` fopt would not have written."""
    if pattern is None or not path.is_dir() or path.is_symlink():
        return []
    stray = []
    for dirpath, dirnames, filenames in os.walk(path):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = Path(dirpath, name)
            if p.is_symlink() or not pattern.fullmatch(p.relative_to(root).as_posix()):
                stray.append(p)
    return sorted(stray)


@contextlib.contextmanager
def claim_outputs(out: Path, outputs: Mapping[str, re.Pattern | None], *, force: bool,
                  what: str) -> Iterator[OwnedFolder]:
    """Claim OUT, hold its write lock and clear the way for `outputs` for the block.

    `outputs` maps each top-level name the command writes in OUT to the pattern of the paths
    (relative to OUT) it writes under it (None for a file). Without `force` an output that is
    already there is refused; with it, an output fopt did not record, or one holding a file that
    fopt does not write, is refused. All checks come before anything is replaced; the outputs are
    recorded in the ledger before they are written, so a killed run leaves them fopt's.
    """
    # the lock first: a second writer is refused before it can take a half-claimed folder for
    # the user's
    with exclusive(out, what=f"{what} {out}", folder=True):
        owned = OwnedFolder.claim(out, what=what)
        present = [out / name for name in outputs if (out / name).exists() or (out / name).is_symlink()]
        if present and not force:
            raise OutputExistsError(f"{out} already holds {', '.join(p.name for p in present)} from an "
                                    f"earlier run; pass --force to replace them")
        for p in present:
            if p.is_symlink():   # fopt never writes a link: it points at somebody's files
                raise OutputExistsError(f"{p} is a link fopt did not make; it is left as it is (move it "
                                        f"away or choose another folder)")
            owned.replaceable(p)
            stray = _stray_files(p, out, outputs[p.name])
            if stray:
                raise OutputExistsError(f"{stray[0]} was not written by fopt ({len(stray)} such file(s) in "
                                        f"{p}); nothing was replaced (move them away, or choose another folder)")
        owned.record(*(out / name for name in outputs))
        yield owned
