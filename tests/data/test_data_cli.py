"""`fopt data` CLI: every bad input exits 2 with one `error:` line naming the file (and line),
and leaves OUT exactly as it was."""

from __future__ import annotations

import gzip
import re
import struct

import pytest
from click.testing import CliRunner

from fopt.cli import cli

IMG = "Anno/list_category_img.txt"
CLOTH = "Anno/list_category_cloth.txt"
PART = "Eval/list_eval_partition.txt"


def _rewrite(raw, rel, line_no, text):
    path = raw / rel
    lines = path.read_text().splitlines()
    lines[line_no - 1] = text
    path.write_text("\n".join(lines) + "\n")


def _drop_rows(raw, rel, keep):
    path = raw / rel
    lines = path.read_text().splitlines()
    rows = [r for r in lines[2:] if keep(r)]
    path.write_text("\n".join([str(len(rows)), lines[1], *rows]) + "\n")


def _keep_first(raw, limits):
    """Keep at most limits[label] images of those labels in list_category_img.txt."""
    seen = {}

    def keep(row):
        lab = int(row.split()[1])
        seen[lab] = seen.get(lab, 0) + 1
        return seen[lab] <= limits.get(lab, 10**9)

    _drop_rows(raw, IMG, keep)


def _first_image(raw):
    return (raw / IMG).read_text().splitlines()[2].split()[0]


def _corrupt_idx(raw):
    d = raw / "FashionMNIST" / "raw"
    d.mkdir(parents=True)
    with gzip.open(d / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 2051, 5, 28, 28) + b"\0" * 100)  # header says 5 images, data is short


# (name, how to damage the raw copy, extra CLI args, regex the one-line message must match)
CASES = [
    ("raw_missing", lambda r: __import__("shutil").rmtree(r), [], r"raw dataset folder does not exist"),
    ("img_file_missing", lambda r: (r / IMG).unlink(), [], r"list_category_img\.txt: annotation file is missing"),
    ("cloth_file_missing", lambda r: (r / CLOTH).unlink(), [], r"list_category_cloth\.txt: annotation file is missing"),
    ("count_not_a_number", lambda r: _rewrite(r, IMG, 1, "thirty"), [], r"list_category_img\.txt:1: wrong count line 'thirty'"),
    ("count_mismatch", lambda r: _rewrite(r, IMG, 1, "99"), [], r"list_category_img\.txt:1: wrong count line: says 99 rows but the file has 36"),
    ("cloth_count_mismatch", lambda r: _rewrite(r, CLOTH, 1, "46"), [], r"list_category_cloth\.txt:1: wrong count line: says 46"),
    ("partition_count_blank", lambda r: _rewrite(r, PART, 1, ""), [], r"list_eval_partition\.txt:1: wrong count line"),
    ("wrong_header", lambda r: _rewrite(r, IMG, 2, "image_name label"), [], r"list_category_img\.txt:2: wrong header"),
    ("too_many_fields", lambda r: _rewrite(r, IMG, 5, "img/a/b.jpg 3 extra"), [], r"list_category_img\.txt:5: wrong number of fields \(3"),
    ("too_few_fields", lambda r: _rewrite(r, PART, 7, "img/a/b.jpg"), [], r"list_eval_partition\.txt:7: wrong number of fields \(1"),
    ("label_zero", lambda r: _rewrite(r, IMG, 4, "img/a/b.jpg 0"), [], r"list_category_img\.txt:4: category label 0 is outside the category list \(1\.\.50"),
    ("label_too_big", lambda r: _rewrite(r, IMG, 6, "img/a/b.jpg 51"), [], r"list_category_img\.txt:6: category label 51 is outside"),
    ("label_not_int", lambda r: _rewrite(r, IMG, 3, "img/a/b.jpg three"), [], r"list_category_img\.txt:3: category label 'three' is not an integer"),
    ("bad_category_type", lambda r: _rewrite(r, CLOTH, 3, "Anorak 7"), [], r"list_category_cloth\.txt:3: category type '7'"),
    ("bad_split_name", lambda r: _rewrite(r, PART, 3, f"{_first_image(r)} training"), [], r"list_eval_partition\.txt:3: evaluation status 'training'"),
    ("image_not_in_partition", lambda r: _drop_rows(r, PART, lambda row: not row.startswith(_first_image(r))), [],
     r"list_eval_partition\.txt: image 'img/.+' \(Anno/list_category_img\.txt line 3\) has no row"),
    ("path_with_dotdot", lambda r: _rewrite(r, IMG, 8, "img/../../etc/passwd 3"), [], r"list_category_img\.txt:8: image path 'img/\.\./\.\./etc/passwd' escapes the dataset root"),
    ("absolute_path", lambda r: _rewrite(r, IMG, 9, "/etc/passwd 3"), [], r"list_category_img\.txt:9: image path '/etc/passwd' is absolute"),
    ("absolute_path_in_partition", lambda r: _rewrite(r, PART, 4, "/tmp/x.jpg train"), [], r"list_eval_partition\.txt:4: image path '/tmp/x\.jpg' is absolute"),
    ("threshold_leaves_none", lambda r: None, ["--sampling-threshold", "13"], r"--sampling-threshold 13 leaves 0 class\(es\); at least 2"),
    ("threshold_leaves_one", lambda r: _keep_first(r, {41: 0, 18: 4}), ["--sampling-threshold", "5"],
     r"--sampling-threshold 5 leaves 1 class\(es\); at least 2"),
    ("strict_missing_image", lambda r: next((r / "Img/img").rglob("*.jpg")).unlink(), ["--strict"],
     r"1 image file\(s\) missing or undecodable, e\.g\. .+\.jpg \(missing; listed in .+list_category_img\.txt:\d+\)"),
    ("strict_undecodable_image", lambda r: next((r / "Img/img").rglob("*.jpg")).write_bytes(b"not a jpeg"), ["--strict"],
     r"1 image file\(s\) missing or undecodable, e\.g\. .+\.jpg \(undecodable"),
    ("wrong_format_forced", lambda r: None, ["--format", "fashion-mnist"], r"no Fashion-MNIST IDX files"),
    ("undetectable_layout", lambda r: [__import__("shutil").rmtree(r), r.mkdir()], [], r"cannot detect the dataset layout"),
    ("corrupt_idx", lambda r: [__import__("shutil").rmtree(r), _corrupt_idx(r)], [], r"train-images-idx3-ubyte\.gz: IDX header says \(5, 28, 28\)"),
    ("bad_cap", lambda r: None, ["--max-per-class", "0"], r"--max-per-class must be >= 1"),
]


@pytest.mark.parametrize("out_exists", [True, False], ids=["out-exists", "out-new"])
@pytest.mark.parametrize("name, damage, args, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(raw_copy, tmp_path, snapshot, name, damage,
                                                            args, message, out_exists):
    damage(raw_copy)
    out = tmp_path / "out"
    if out_exists:
        out.mkdir()
        (out / "dataset.csv").write_text("an older table\n")
    before = snapshot(out)
    res = CliRunner().invoke(cli, ["data", "build", str(raw_copy), str(out), *args])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in res.output
    assert re.search(message, lines[0]), lines[0]
    assert snapshot(out) == before
    assert out.exists() == out_exists


def test_missing_images_are_skipped_with_a_warning(raw_copy, tmp_path):
    jpg = next((raw_copy / "Img/img").rglob("*.jpg"))
    jpg.unlink()
    res = CliRunner().invoke(cli, ["data", "build", str(raw_copy), str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert "warning: 1 image file(s) missing or undecodable" in " ".join(res.stderr.split())
    assert jpg.name in res.stderr
    table = (tmp_path / "out" / "dataset.csv").read_text()
    assert table.count("\n") == 1 + 35


def test_build_prints_counts_and_writes_json_csv_plot(tiny_raw, tmp_path):
    res = CliRunner().invoke(cli, ["data", "build", str(tiny_raw), str(tmp_path / "out"), "--plot",
                                   str(tmp_path / "h.png"), "--json", str(tmp_path / "m.json"),
                                   "--csv", str(tmp_path / "c.csv")])
    assert res.exit_code == 0, res.output
    for name in ("Blouse", "Tee", "Dress", "all"):
        assert name in res.stdout
    assert (tmp_path / "h.png").stat().st_size > 1000
    assert (tmp_path / "c.csv").read_text().splitlines()[0] == "label,class,train,val,test,total"
    assert '"classes"' in (tmp_path / "m.json").read_text()


def test_synth_cli_and_bad_option(tmp_path):
    res = CliRunner().invoke(cli, ["data", "synth", str(tmp_path / "s"), "--classes", "2", "--per-class", "3",
                                   "--size", "24", "--preview", str(tmp_path / "p.png")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "s/Anno/list_category_img.txt").read_text().startswith("6\n")
    assert (tmp_path / "p.png").is_file()
    res = CliRunner().invoke(cli, ["data", "synth", str(tmp_path / "t"), "--classes", "60"])
    assert res.exit_code == 2
    assert res.stderr.strip().splitlines() == ["error: --classes must be between 2 and 50 (the benchmark's categories), got 60"]
    assert not (tmp_path / "t").exists()


def test_synth_help_states_the_real_defaults():
    from fopt.data.synth import DEFAULT_PER_CLASS, DEFAULT_SIZE

    res = CliRunner().invoke(cli, ["data", "synth", "--help"])
    text = " ".join(res.output.split())
    assert f"Images per category. [default: {DEFAULT_PER_CLASS}]" in text
    assert f"Image side in pixels. [default: {DEFAULT_SIZE}]" in text
