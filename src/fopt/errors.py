"""The one family of errors a user can cause.

Every error the user can fix (missing file, wrong format, bad option, corrupt checkpoint, no GPU,
missing optional package) is a `FoptError`. The CLI prints ``error: <message>`` on one line and
exits with status 2; ``fopt --debug`` shows the traceback. Bugs are anything else and keep their
traceback.
"""

from __future__ import annotations

import errno


def first_line(e: BaseException, default: str | None = None) -> str:
    """The first non-empty line of an exception's message: what a one-line error quotes from a
    library's multi-line one. Without a message: `default`, else the exception's type name."""
    for line in str(e).splitlines():
        if line.strip():
            return line.strip()
    return type(e).__name__ if default is None else default


def one_line(e: BaseException) -> str:
    """A FoptError's own first line; any other exception's prefixed with its type, so a row's
    ``error`` says what failed even when the library's message alone does not."""
    line = first_line(e, "")
    if isinstance(e, FoptError):
        return line or type(e).__name__
    return f"{type(e).__name__}: {line}" if line else type(e).__name__


class FoptError(Exception):
    """Base class: a problem the user can fix. Message must fit on one line."""

    exit_code = 2


class UsageError(FoptError):
    """Conflicting or invalid options (say what to pass instead)."""


class InputError(FoptError):
    """An input file or folder is missing, unreadable or of the wrong format."""


class DataError(InputError):
    """A dataset or annotation file is malformed (name the file and line)."""


class CheckpointError(InputError):
    """A file is not a fopt checkpoint, is truncated, or names an unknown model."""


class OutputExistsError(FoptError):
    """An output exists and --force was not given."""


class MissingDependency(FoptError):
    """An optional package is needed: the message says what to pip install."""


class DeviceUnavailable(FoptError):
    """The requested device (e.g. CUDA) is not available here."""


class ExportError(FoptError):
    """Export failed inside the exporter; no partial file is left."""


class ValidationError(FoptError):
    """An artifact does not match its parent (shape mismatch, parity over tolerance)."""


class AnalysisIncomplete(FoptError):
    """--strict analysis met an op type it cannot count."""


class BusyError(FoptError):
    """Another fopt process is writing the same folder or file."""


# What the machine refuses and the user can fix (free space, permissions, a read-only mount):
# reported in one line like a FoptError, not as a traceback.
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def environment_error_message(e: BaseException) -> str | None:
    """One line for an OSError the user can fix (disk full, no permission), else None."""
    if not isinstance(e, OSError) or e.errno not in ENVIRONMENT_ERRNOS:
        return None
    what = e.strerror or first_line(e)
    return f"{what}: {e.filename}" if e.filename else what
