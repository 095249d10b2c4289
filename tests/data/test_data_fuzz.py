"""Fuzzed inputs to `fopt data build`: every damaged annotation file or IDX header ends in exit 2
with exactly one `error:` line, no traceback, and nothing written to OUT.

The damage is drawn from fixed seeds, so every run tries the same few dozen cases; each kind of
damage is one that no valid file can have (see the comment on each generator).
"""

from __future__ import annotations

import gzip
import random
import struct

import numpy as np
import pytest
from click.testing import CliRunner

from fopt.cli import cli

IMG = "Anno/list_category_img.txt"
CLOTH = "Anno/list_category_cloth.txt"
PART = "Eval/list_eval_partition.txt"
FILES = (IMG, CLOTH, PART)
SEED = 20240611


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")


def truncate(data: bytes, r: random.Random) -> bytes:
    # cut anywhere before the last row starts: a row is lost, so the count line is wrong (or a
    # row is cut short, or the header is gone)
    last = data.rstrip(b"\n").rfind(b"\n") + 1
    return data[:r.randrange(0, last)]


def wrong_columns(data: bytes, r: random.Random) -> bytes:
    lines = _lines(data)
    i = r.randrange(2, len(lines) - 1)
    fields = lines[i].split()
    how = r.choice(["drop", "add", "glue"])
    if how == "drop":
        fields = fields[:1]
    elif how == "add":
        fields += [r.choice([b"x", b"3", b"train", b"img/a.jpg"]) for _ in range(r.randint(1, 3))]
    else:
        fields = [b"".join(fields)]
    lines[i] = b"  ".join(fields)
    return b"\n".join(lines)


def non_utf8(data: bytes, r: random.Random) -> bytes:
    # bytes that are never valid UTF-8: a lone continuation byte, 0xff, an overlong or surrogate form
    bad = r.choice([b"\xff", b"\x80", b"\xc0\xaf", b"\xed\xa0\x80", b"\xfe\xfe"])
    at = r.randrange(0, len(data))
    return data[:at] + bad + data[at:]


def huge_number(data: bytes, r: random.Random, name: str) -> bytes:
    lines = _lines(data)
    digits = str(r.randint(1, 9)).encode() + b"9" * r.choice([12, 40, 5000])   # > 12 digits: never valid
    where = r.choice(["count", "field"])
    if where == "count":
        lines[0] = digits
    else:
        i = r.randrange(2, len(lines) - 1)
        first = lines[i].split()[0]
        if name == PART:    # no number in a partition row: the image name is made huge instead
            lines[i] = first + b"x" * (len(digits) + 300) + b" train"
        else:
            lines[i] = first + b"  " + digits
    return b"\n".join(lines)


def _annotation_cases():
    cases = []
    for k in range(30):
        name = FILES[k % 3]
        kind = ("truncate", "columns", "non-utf8", "huge", "huge")[k % 5]
        cases.append(pytest.param(name, kind, SEED + k, id=f"{k:02d}-{kind}-{name.split('/')[-1][:-4]}"))
    return cases


def _damage(path, kind, seed):
    r = random.Random(seed)
    data = path.read_bytes()
    if kind == "truncate":
        out = truncate(data, r)
    elif kind == "columns":
        out = wrong_columns(data, r)
    elif kind == "non-utf8":
        out = non_utf8(data, r)
    else:
        out = huge_number(data, r, path.relative_to(path.parents[1]).as_posix())
    assert out != data
    path.write_bytes(out)


def _assert_refused(raw, out, *args):
    res = CliRunner().invoke(cli, ["data", "build", str(raw), str(out), *args])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert len(lines[0]) < 600, lines[0]
    assert "Traceback" not in res.output
    assert not out.exists()


@pytest.mark.parametrize("name, kind, seed", _annotation_cases())
def test_fuzzed_annotation_file(raw_copy, tmp_path, name, kind, seed):
    _damage(raw_copy / name, kind, seed)
    # --strict: a huge image name is a missing file, which is otherwise skipped with a warning
    _assert_refused(raw_copy, tmp_path / "out", "--strict")


# ----------------------------------------------------------------------------- IDX headers

def _write(path, data: bytes, gz: bool = True):
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def _fuzzed_idx(r: random.Random, ndim: int, n: int) -> tuple[bytes, bool]:
    """An IDX file of `n` items that is wrong in one drawn way; (bytes, gzip them?)."""
    shape = [n] + [28] * (ndim - 1)
    magic = struct.pack(">BBBB", 0, 0, 0x08, ndim)
    body = bytes(r.randrange(10) for _ in range(int(np.prod(shape))))
    how = r.choice(["magic", "dtype", "ndim", "dims-huge", "dims-short", "payload-long", "payload-short",
                    "header-cut", "not-gzip", "gzip-cut"])
    if how == "magic":
        magic = bytes([r.randrange(1, 256), r.randrange(256)]) + magic[2:]
    elif how == "dtype":
        magic = magic[:2] + bytes([r.choice([0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0xFF])]) + magic[3:]
    elif how == "ndim":
        magic = magic[:3] + bytes([r.choice([d for d in (0, 1, 2, 3, 4, 255) if d != ndim])])
    elif how == "dims-huge":
        shape[r.randrange(ndim)] = r.choice([2**32 - 1, 2**31, 10**9])
    elif how == "dims-short":
        shape[0] = n + r.randint(1, 5)
    elif how == "payload-long":
        body += bytes(r.randint(1, 100))
    elif how == "payload-short":
        body = body[:r.randrange(len(body))]
    data = magic + struct.pack(f">{ndim}I", *shape) + body
    if how == "header-cut":
        data = data[:r.randrange(4 + 4 * ndim)]
    if how == "not-gzip":
        return data, False                      # a plain file named .gz
    if how == "gzip-cut":
        return gzip.compress(data)[:r.randrange(10, 40)], False
    return data, True


def _idx_cases():
    return [pytest.param(k, id=f"idx-{k:02d}") for k in range(16)]


@pytest.mark.parametrize("k", _idx_cases())
def test_fuzzed_idx_header(tmp_path, k):
    r = random.Random(SEED * 7 + k)
    d = tmp_path / "fm" / "FashionMNIST" / "raw"
    n = 20
    good_images = struct.pack(">IIII", 2051, n, 28, 28) + bytes(n * 784)
    good_labels = struct.pack(">II", 2049, n) + bytes(i % 10 for i in range(n))
    for stem in ("train", "t10k"):
        _write(d / f"{stem}-images-idx3-ubyte.gz", good_images)
        _write(d / f"{stem}-labels-idx1-ubyte.gz", good_labels)
    stem = r.choice(["train", "t10k"])
    which, ndim = r.choice([("images-idx3", 3), ("labels-idx1", 1)])
    data, gz = _fuzzed_idx(r, ndim, n)
    _write(d / f"{stem}-{which}-ubyte.gz", data, gz)
    _assert_refused(tmp_path / "fm", tmp_path / "out")


def _set_line(raw, rel, line_no, text: bytes):
    lines = (raw / rel).read_bytes().split(b"\n")
    lines[line_no - 1] = text
    (raw / rel).write_bytes(b"\n".join(lines))


@pytest.mark.parametrize("rel, line_no, text", [
    (IMG, 3, b"img/a/b.jpg " + b"9" * 5000),            # int() refuses more than 4300 digits
    (IMG, 1, "\u00b2".encode()),                         # '²'.isdigit() is True, int('²') fails
    (CLOTH, 1, "\u0663\u0666".encode()),                 # Arabic-Indic digits
    (IMG, 4, b"img/a\x00b.jpg 3"),                       # NUL in a path: os calls raise ValueError
    (IMG, 5, b"img/" + b"a" * 300 + b"/b.jpg 3"),        # a name too long for the OS (ENAMETOOLONG)
    (PART, 6, b"img/" + b"a" * 5000 + b".jpg train"),
], ids=["label-5000-digits", "count-superscript", "count-arabic-digits", "nul-in-path", "name-too-long",
        "partition-name-too-long"])
def test_hostile_annotation_values(raw_copy, tmp_path, rel, line_no, text):
    _set_line(raw_copy, rel, line_no, text)
    _assert_refused(raw_copy, tmp_path / "out", "--strict")
