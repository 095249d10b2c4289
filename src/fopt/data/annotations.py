"""Readers for the DeepFashion Category and Attribute Prediction annotation files.

Each file is: line 1 the number of rows, line 2 a header, then one row per entry whose fields are
separated by runs of spaces (image names are left-justified to 71 characters)::

    Anno/list_category_cloth.txt   category_name  category_type     (type 1/2/3)
    Anno/list_category_img.txt     image_name  category_label       (1-based row of the list above)
    Eval/list_eval_partition.txt   image_name  evaluation_status    (train/val/test)

Every problem raises `DataError` naming the file and the 1-based line number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from fopt.errors import DataError

CLOTH_FILE = "Anno/list_category_cloth.txt"
IMG_FILE = "Anno/list_category_img.txt"
PARTITION_FILE = "Eval/list_eval_partition.txt"

_HEADERS = {
    CLOTH_FILE: ("category_name", "category_type"),
    IMG_FILE: ("image_name", "category_label"),
    PARTITION_FILE: ("image_name", "evaluation_status"),
}
SPLITS = ("train", "val", "test")
MAX_DIGITS = 12             # a count or label longer than this is not one (and int() would balk)
_INT = re.compile(r"-?[0-9]+")          # ASCII digits only: str.isdigit() also takes '²' and '١'
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _short(text: str, limit: int = 60) -> str:
    """`text` cut for a one-line message."""
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass(frozen=True)
class Row:
    line: int              # 1-based line number in the file
    fields: tuple[str, ...]


def read_table(path: Path, name: str) -> list[Row]:
    """Rows of one annotation file after checking its count line and header."""
    if not path.is_file():
        raise DataError(f"{path}: annotation file is missing")
    try:
        text = path.read_text(encoding="utf-8-sig")  # tolerate a BOM from Windows editors
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a text file ({e.reason} at byte {e.start})") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from e
    lines = text.splitlines()
    # trailing blank lines are harmless; blank lines inside the table are not
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DataError(f"{path}:1: empty file (expected a count line)")
    first = lines[0].strip()
    if not (first.isascii() and first.isdigit()) or len(first) > MAX_DIGITS:
        raise DataError(f"{path}:1: wrong count line {_short(first)!r} (expected the number of rows)")
    count = int(first)
    expected_header = _HEADERS[name]
    if len(lines) < 2 or tuple(lines[1].split()) != expected_header:
        got = _short(lines[1].strip()) if len(lines) >= 2 else "end of file"
        raise DataError(f"{path}:2: wrong header {got!r} (expected {'  '.join(expected_header)!r})")
    rows = []
    for i, line in enumerate(lines[2:], start=3):
        fields = tuple(line.split())
        if len(fields) != 2:
            raise DataError(f"{path}:{i}: wrong number of fields ({len(fields)}, expected 2: "
                            f"{' '.join(expected_header)})")
        rows.append(Row(i, fields))
    if count != len(rows):
        raise DataError(f"{path}:1: wrong count line: says {count} rows but the file has {len(rows)}")
    return rows


def check_rel_path(rel: str, path: Path, line: int) -> str:
    """An annotation image path must stay inside the dataset root: no absolute paths, no '..'."""
    if _CONTROL.search(rel):
        raise DataError(f"{path}:{line}: image path {_short(rel)!r} contains a control character")
    p = PurePosixPath(rel.replace("\\", "/"))
    if p.is_absolute() or rel.startswith(("/", "\\")) or (len(rel) > 1 and rel[1] == ":"):
        raise DataError(f"{path}:{line}: image path {_short(rel)!r} is absolute (it must be relative to the dataset root)")
    if ".." in p.parts:
        raise DataError(f"{path}:{line}: image path {_short(rel)!r} escapes the dataset root ('..')")
    return p.as_posix()


def read_categories(root: Path) -> list[tuple[str, int]]:
    """(name, type) per category; index + 1 is the label used by list_category_img.txt."""
    path = root / CLOTH_FILE
    out = []
    seen: set[str] = set()
    for row in read_table(path, CLOTH_FILE):
        name, ctype = row.fields
        if ctype not in ("1", "2", "3"):
            raise DataError(f"{path}:{row.line}: category type {_short(ctype)!r} must be 1, 2 or 3 (upper, lower, full body)")
        if name in seen:
            raise DataError(f"{path}:{row.line}: category {_short(name)!r} is listed twice")
        seen.add(name)
        out.append((name, int(ctype)))
    return out


def read_image_labels(root: Path, n_categories: int) -> list[tuple[str, int, int]]:
    """(relative path, 1-based label, line) per image."""
    path = root / IMG_FILE
    out = []
    seen: dict[str, int] = {}
    for row in read_table(path, IMG_FILE):
        rel, lab = row.fields
        rel = check_rel_path(rel, path, row.line)
        if not _INT.fullmatch(lab):
            raise DataError(f"{path}:{row.line}: category label {_short(lab)!r} is not an integer")
        if len(lab) > MAX_DIGITS or not 1 <= int(lab) <= n_categories:
            raise DataError(f"{path}:{row.line}: category label {_short(lab)} is outside the category list "
                            f"(1..{n_categories} in {CLOTH_FILE})")
        label = int(lab)
        if rel in seen:
            raise DataError(f"{path}:{row.line}: image {_short(rel)!r} is listed twice (first on line {seen[rel]})")
        seen[rel] = row.line
        out.append((rel, label, row.line))
    return out


def read_partition(root: Path) -> dict[str, str] | None:
    """image path -> split, or None when the partition file does not exist."""
    path = root / PARTITION_FILE
    if not path.exists():
        return None
    out: dict[str, str] = {}
    for row in read_table(path, PARTITION_FILE):
        rel, status = row.fields
        rel = check_rel_path(rel, path, row.line)
        if status not in SPLITS:
            raise DataError(f"{path}:{row.line}: evaluation status {_short(status)!r} must be train, val or test")
        out[rel] = status
    return out
