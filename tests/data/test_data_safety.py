"""`fopt data build/synth`: nothing of the user's is lost, modes follow the umask, and hostile
inputs (decompression bombs, lying IDX headers, malformed tables, symlinks) end in one line."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import stat
import struct
import zlib

import numpy as np
import pytest
from click.testing import CliRunner

from fopt.cli import cli
from fopt.data.build import build_dataset
from fopt.data.datasets import DatasetTable
from fopt.data.synth import synthesize
from fopt.errors import BusyError, DataError, OutputExistsError
from fopt.workdir import LEDGER_NAME, exclusive


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _one_error(res, pattern=""):
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.output and pattern in lines[0], lines[0]
    return lines[0]


def _users_folder(path):
    path.mkdir()
    (path / "images").mkdir()
    (path / "images" / "beach.jpg").write_bytes(b"my holiday")
    (path / "dataset.csv").write_text("my own table\n")


# ----------------------------------------------------------------------------- 1. nothing lost

@pytest.mark.parametrize("force", [[], ["--force"]], ids=["plain", "force"])
def test_build_refuses_a_users_folder_even_with_force(tiny_raw, tmp_path, snapshot, force):
    out = tmp_path / "out"
    _users_folder(out)
    before = snapshot(out)
    _one_error(_run("data", "build", tiny_raw, out, *force), "not made by fopt")
    assert snapshot(out) == before


def test_build_replaces_only_its_own_outputs_and_only_with_force(tiny_raw, tmp_path):
    out = tmp_path / "out"
    first = build_dataset(tiny_raw, out, max_per_class=4)
    (out / "notes.txt").write_text("mine")
    csv = (out / "dataset.csv").read_text()
    _one_error(_run("data", "build", tiny_raw, out), "pass --force")
    assert (out / "dataset.csv").read_text() == csv
    res = _run("data", "build", tiny_raw, out, "--force")
    assert res.exit_code == 0, res.output
    assert len((out / "dataset.csv").read_text().splitlines()) == 1 + 36 != 1 + len(first.table)
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / LEDGER_NAME).read_text())["paths"] == ["dataset.csv", "images", "mapping.json"]


def test_force_keeps_a_users_file_inside_fopts_image_folder(fake_fmnist, tmp_path):
    out = tmp_path / "out"
    build_dataset(fake_fmnist, out)
    (out / "images" / "beach.jpg").write_bytes(b"my holiday")
    with pytest.raises(OutputExistsError, match="beach.jpg was not written by fopt"):
        build_dataset(fake_fmnist, out, force=True)
    assert (out / "images" / "beach.jpg").read_bytes() == b"my holiday"
    assert (out / "images" / "train" / "00000.png").is_file()


def test_a_second_writer_of_out_is_refused(tiny_raw, tmp_path, snapshot):
    out = tmp_path / "out"
    build_dataset(tiny_raw, out)
    before = snapshot(out)
    with exclusive(out):          # held by "another" build (this process: its pid is alive)
        line = _one_error(_run("data", "build", tiny_raw, out, "--force"), "being written by another fopt process")
        with pytest.raises(BusyError):
            synthesize(out, classes=2, per_class=2, size=16, force=True)
    assert "error: dataset table" in line
    after = snapshot(out)
    assert after == before


def test_synth_force_replaces_only_what_fopt_wrote(tmp_path):
    out = tmp_path / "s"
    synthesize(out, classes=2, per_class=3, size=16)
    (out / "notes.txt").write_text("mine")
    synthesize(out, classes=2, per_class=4, size=16, force=True)
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "Anno/list_category_img.txt").read_text().splitlines()[0] == "8"
    # a file the user put among fopt's images stops --force, and nothing is replaced
    item = next((out / "Img/img").iterdir())
    (item / "beach.jpg").write_bytes(b"my holiday")
    with pytest.raises(OutputExistsError, match="beach.jpg was not written by fopt"):
        synthesize(out, classes=2, per_class=5, size=16, force=True)
    assert (item / "beach.jpg").read_bytes() == b"my holiday"
    assert (out / "Anno/list_category_img.txt").read_text().splitlines()[0] == "8"


def test_synth_force_refuses_a_users_folder(tmp_path, snapshot):
    out = tmp_path / "photos"
    _users_folder(out)
    before = snapshot(out)
    _one_error(_run("data", "synth", out, "--classes", "2", "--per-class", "2", "--size", "16", "--force"),
               "not made by fopt")
    assert snapshot(out) == before


def test_force_has_the_same_help_on_both_commands():
    helps = [" ".join(_run("data", cmd, "--help").output.split()) for cmd in ("build", "synth")]
    for text in helps:
        assert "--force Replace the outputs an earlier fopt run wrote in OUT (never files fopt did not write)." in text


# ----------------------------------------------------------------------------- 2. modes

@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(p):
    return stat.S_IMODE(p.stat().st_mode)


def test_folders_and_images_get_the_umask_mode(tmp_path, fake_fmnist, umask_022):
    raw = synthesize(tmp_path / "raw", classes=2, per_class=2, size=16)
    for d in (raw, raw / "Img", raw / "Img/img", raw / "Anno", raw / "Eval"):
        assert _mode(d) == 0o755, d
    assert _mode(next((raw / "Img/img").rglob("*.jpg"))) == 0o644
    assert _mode(raw / "Anno/list_category_img.txt") == 0o644
    out = tmp_path / "fm-table"
    build_dataset(fake_fmnist, out)
    for d in (out, out / "images", out / "images/train"):
        assert _mode(d) == 0o755, d
    assert _mode(out / "images/train/00000.png") == 0o644
    for f in ("dataset.csv", "mapping.json", LEDGER_NAME):
        assert _mode(out / f) == 0o644, f


# ----------------------------------------------------------------------------- 3. bombs

def _png_claiming(width, height):
    """A PNG whose header claims width x height pixels (the pixel data is absent)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


@pytest.mark.parametrize("size", [(20000, 10000), (10000, 9000)], ids=["bomb-error", "bomb-warning"])
def test_decompression_bomb_is_skipped_like_a_corrupt_image(raw_copy, tmp_path, snapshot, size):
    bomb = sorted((raw_copy / "Img/img").rglob("*.jpg"))[0]
    bomb.write_bytes(_png_claiming(*size))
    res = build_dataset(raw_copy, tmp_path / "ds")
    assert len(res.table) == 35
    assert [s["reason"].split(":")[0] for s in res.skipped] == ["too large"]
    assert any("1 image file(s) missing or undecodable" in w for w in res.warnings)
    out = tmp_path / "strict"
    cli_res = _run("data", "build", raw_copy, out, "--strict")
    line = _one_error(cli_res, bomb.name)
    assert "too large" in line and "Warning" not in cli_res.stderr
    assert snapshot(out) == {}


# ----------------------------------------------------------------------------- 4. IDX headers

def _idx(path, header, payload=b""):
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as f:
        f.write(header + payload)


@pytest.mark.parametrize("header, payload, message", [
    (struct.pack(">IIII", 2051, 2**32 - 1, 2**32 - 1, 2**32 - 1), b"", r"more than the \d+-byte limit"),
    (struct.pack(">IIII", 2051, 1, 2**16, 2**16), b"\0" * 64, r"more than the \d+-byte limit"),
    (struct.pack(">IIII", 2051, 1, 2, 2), b"\0" * 5, r"IDX header says \(1, 2, 2\) but the file holds more than 4 bytes"),
    (struct.pack(">IIII", 2051, 2, 28, 28), b"\0" * 784, r"holds 784 bytes of data"),
    (struct.pack(">IIII", 0x0D03, 1, 28, 28), b"\0" * 784, r"data type code 0x0d is not unsigned bytes"),
    (struct.pack(">III", 0x0802, 1, 784), b"\0" * 784, r"has 2 dimension\(s\), expected 3"),
    (struct.pack(">II", 2051, 1), b"", r"IDX header is truncated"),
    (b"\xff\xff\x08\x03", b"", r"not an IDX file with magic number 2051"),
    (struct.pack(">IIII", 2051, 2, 0, 28), b"", r"IDX images of 0x28 pixels"),
], ids=["dims-overflow", "dims-over-cap", "payload-too-long", "payload-short", "dtype", "ndim",
        "truncated-header", "magic", "zero-side"])
def test_lying_idx_header_is_one_line(tmp_path, snapshot, header, payload, message):
    raw = tmp_path / "fm"
    _idx(raw / "FashionMNIST/raw/train-images-idx3-ubyte.gz", header, payload)
    _idx(raw / "FashionMNIST/raw/train-labels-idx1-ubyte.gz", struct.pack(">II", 2049, 1), b"\0")
    with pytest.raises(DataError, match=message):
        build_dataset(raw, tmp_path / "out")
    assert snapshot(tmp_path / "out") == {}


def test_gzip_stream_is_read_no_further_than_the_header_allows(tmp_path, monkeypatch):
    from fopt.data import readers

    raw = tmp_path / "fm"
    _idx(raw / "FashionMNIST/raw/train-images-idx3-ubyte.gz", struct.pack(">IIII", 2051, 1, 28, 28),
         b"\0" * (784 + 10_000_000))
    asked = []
    real_open = gzip.open

    def spy_open(*a, **k):
        f = real_open(*a, **k)
        real_read = f.read

        def read(n=-1):
            asked.append(n)
            return real_read(n)
        f.read = read
        return f
    monkeypatch.setattr(readers.gzip, "open", spy_open)
    with pytest.raises(DataError, match="more than 784 bytes"):
        build_dataset(raw, tmp_path / "out")
    assert asked and all(0 <= n <= 785 for n in asked)


# ----------------------------------------------------------------------------- 5. synth .

def test_synth_into_the_current_folder(tmp_path, monkeypatch):
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    res = _run("data", "synth", ".", "--classes", "2", "--per-class", "2", "--size", "16")
    assert res.exit_code == 0, res.output
    assert (here / "Anno/list_category_img.txt").read_text().startswith("4\n")
    assert not [p.name for p in here.iterdir() if p.name.startswith(".fopt-synth")]


# ----------------------------------------------------------------------------- 6. malformed tables

def _edit_mapping(d, **kw):
    m = json.loads((d / "mapping.json").read_text())
    m.update(kw)
    (d / "mapping.json").write_text(json.dumps(m))


def _set_label(d, row, value):
    lines = (d / "dataset.csv").read_text().splitlines()
    f = lines[row - 1].split(",")
    f[1] = value
    lines[row - 1] = ",".join(f)
    (d / "dataset.csv").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("damage, message", [
    (lambda d: _edit_mapping(d, root=None), r"mapping\.json: malformed 'root' null"),
    (lambda d: _edit_mapping(d, root=7), r"mapping\.json: malformed 'root' 7"),
    (lambda d: _edit_mapping(d, classes=[None, {"a": 1}]), r"mapping\.json: malformed 'classes'"),
    (lambda d: _edit_mapping(d, classes=["a", "a"]), r"class 'a' is listed twice"),
    (lambda d: (d / "mapping.json").write_text("[1, 2]"), r"mapping\.json: malformed"),
    (lambda d: (d / "mapping.json").write_bytes(b"\xff\xfe{"), r"mapping\.json: not valid JSON"),
    (lambda d: _set_label(d, 2, "1e30"), r"dataset\.csv:2: label '1e30' is not an integer"),
    (lambda d: _set_label(d, 3, "9" * 40), r"dataset\.csv:3: label '9{38}"),
    (lambda d: _set_label(d, 4, "-1"), r"dataset\.csv:4: label -1 is outside 0\.\.5"),
    (lambda d: _set_label(d, 2, "2.5"), r"dataset\.csv:2: label '2\.5' is not an integer"),
    (lambda d: (d / "dataset.csv").write_text("path,label,label_name\nx.jpg,0,Blouse\n"), r"missing column\(s\) split"),
    (lambda d: (d / "dataset.csv").write_bytes(b"path,label\n\xff\xfe\n"), r"dataset\.csv: not a readable CSV"),
])
def test_malformed_table_is_a_data_error(synth_dataset, tmp_path, damage, message):
    d = tmp_path / "ds"
    shutil.copytree(synth_dataset, d)
    damage(d)
    with pytest.raises(DataError, match=message):
        DatasetTable.load(d)


# ----------------------------------------------------------------------------- 7. silent acceptance

def test_class_without_train_images_is_warned(raw_copy, tiny_raw, tmp_path):
    part = raw_copy / "Eval/list_eval_partition.txt"
    img = dict(line.split() for line in (raw_copy / "Anno/list_category_img.txt").read_text().splitlines()[2:])
    lines = part.read_text().splitlines()
    rows = [f"{p} {'val' if img[p] == '41' and s == 'train' else s}" for p, s in (r.split() for r in lines[2:])]
    part.write_text("\n".join(lines[:2] + rows) + "\n")
    res = _run("data", "build", raw_copy, tmp_path / "out")
    assert res.exit_code == 0, res.output
    text = " ".join(res.stderr.split())
    assert "warning: 1 class(es) have no train image, so a model cannot learn them: Dress" in text
    table = DatasetTable.load(tmp_path / "out")
    assert [w.split(": ", 1)[1] for w in table.warnings()] == [
        "1 class(es) have no train image, so a model cannot learn them: Dress"]
    assert DatasetTable.load(build_dataset(tiny_raw, tmp_path / "ok").out).warnings() == []


def test_symlinks_leading_outside_an_image_folder_are_not_followed(tiny_raw, tmp_path):
    raw = tmp_path / "flat"
    jpgs = sorted((tiny_raw / "Img/img").rglob("*.jpg"))
    for cls, chunk in (("a", jpgs[:6]), ("b", jpgs[6:12])):
        (raw / cls).mkdir(parents=True)
        for p in chunk:
            shutil.copy(p, raw / cls / p.name)
    secret = tmp_path / "secret"
    secret.mkdir()
    shutil.copy(jpgs[20], secret / "private.jpg")
    (raw / "a" / "leak.jpg").symlink_to(secret / "private.jpg")
    (raw / "c").symlink_to(secret, target_is_directory=True)        # a whole class folder outside
    (raw / "b" / "inside.jpg").symlink_to(raw / "a" / jpgs[0].name)  # inside the dataset: fine
    res = build_dataset(raw, tmp_path / "out", sampling_threshold=1)
    assert res.class_names == ["a", "b"]
    assert not any("private" in p or "leak" in p for p in res.table.path)
    assert "b/inside.jpg" in set(res.table.path)
    assert any("2 symlink(s) leading outside" in w for w in res.warnings)


def test_deepfashion_symlink_outside_is_skipped_unread(raw_copy, tmp_path):
    victim = sorted((raw_copy / "Img/img").rglob("*.jpg"))[0]
    outside = tmp_path / "elsewhere.jpg"
    shutil.copy(victim, outside)
    victim.unlink()
    victim.symlink_to(outside)
    res = build_dataset(raw_copy, tmp_path / "ds")
    assert len(res.table) == 35
    assert [s["reason"] for s in res.skipped] == ["symlink leading outside the dataset (not followed)"]


def test_idx_array_round_trip_still_exact(fake_fmnist, tmp_path):
    """The checked reader returns the same pixels as a plain read of the payload."""
    from fopt.data.readers import read_idx

    path = fake_fmnist / "FashionMNIST/raw/train-images-idx3-ubyte.gz"
    with gzip.open(path) as f:
        plain = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    assert np.array_equal(read_idx(path, 3), plain)
