"""`fopt data synth`: deterministic output in the exact DeepFashion annotation formats."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest
from PIL import Image

from fopt.data.categories import CATEGORIES, STUDY_CATEGORIES, label_of
from fopt.data.synth import synthesize
from fopt.errors import OutputExistsError, UsageError


def _digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_images(tmp_path, tiny_raw):
    again = synthesize(tmp_path / "again", classes=3, per_class=12, size=32, seed=3)
    assert _digest(again) == _digest(tiny_raw)
    other = synthesize(tmp_path / "other", classes=3, per_class=12, size=32, seed=4)
    a, b = _digest(tiny_raw), _digest(other)
    jpgs = [k for k in a if k.endswith(".jpg") and k in b]
    assert jpgs and sum(a[k] != b[k] for k in jpgs) == len(jpgs)


def test_layout_and_annotation_formats(tiny_raw):
    cloth = (tiny_raw / "Anno/list_category_cloth.txt").read_text().splitlines()
    assert cloth[0] == "50" and cloth[1].split() == ["category_name", "category_type"]
    rows = [line.split() for line in cloth[2:]]
    assert [(n, int(t)) for n, t in rows] == list(CATEGORIES)
    assert {int(t) for _, t in rows} == {1, 2, 3}

    img = (tiny_raw / "Anno/list_category_img.txt").read_text().splitlines()
    assert img[0] == str(len(img) - 2) == "36"
    assert img[1].split() == ["image_name", "category_label"]
    labels = {}
    for line in img[2:]:
        path, lab = line.split()
        assert re.fullmatch(r"img/[A-Za-z_-]+_\d{4}/img_\d{8}\.jpg", path), path
        assert line.index(lab, 71) == 71  # names left-justified to 71 characters
        assert (tiny_raw / "Img" / path).is_file()
        labels[path] = int(lab)
    # the study's first three categories, with their 1-based benchmark labels
    assert set(labels.values()) == {label_of(n) for n in STUDY_CATEGORIES[:3]} == {41, 18, 3}
    assert all(f"_{CATEGORIES[lab - 1][0]}_" in p for p, lab in labels.items())

    part = (tiny_raw / "Eval/list_eval_partition.txt").read_text().splitlines()
    assert part[0] == "36" and part[1].split() == ["image_name", "evaluation_status"]
    split_of = dict(line.split() for line in part[2:])
    assert set(split_of) == set(labels) and set(split_of.values()) == {"train", "val", "test"}
    # whole items go to one split
    by_item = {}
    for p, s in split_of.items():
        by_item.setdefault(p.split("/")[1], set()).add(s)
    assert all(len(s) == 1 for s in by_item.values())

    with Image.open(next((tiny_raw / "Img/img").rglob("*.jpg"))) as im:
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == (32, 32)


def test_images_are_not_blank_and_differ_by_class(tiny_raw):
    arrays = [np.asarray(Image.open(p), dtype=np.float32) for p in sorted((tiny_raw / "Img/img").rglob("*.jpg"))[:12]]
    assert all(a.std() > 10 for a in arrays)
    assert len({a.tobytes() for a in arrays}) == len(arrays)


def test_reuse_force_and_refusal(tmp_path, snapshot):
    out = tmp_path / "s"
    synthesize(out, classes=2, per_class=3, size=16, seed=0)
    before = snapshot(out)
    synthesize(out, classes=2, per_class=3, size=16, seed=0)  # same arguments: reused as is
    assert snapshot(out) == before
    with pytest.raises(OutputExistsError, match="--force"):
        synthesize(out, classes=2, per_class=4, size=16, seed=0)
    assert snapshot(out) == before
    synthesize(out, classes=2, per_class=4, size=16, seed=0, force=True)
    assert (out / "Anno/list_category_img.txt").read_text().splitlines()[0] == "8"
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "keep.txt").write_text("x")
    with pytest.raises(OutputExistsError):
        synthesize(tmp_path / "foreign", classes=2, per_class=2, size=16)


@pytest.mark.parametrize("kwargs, msg", [
    (dict(classes=1), "--classes"), (dict(classes=51), "--classes"),
    (dict(per_class=0), "--per-class"), (dict(size=8), "--size"),
])
def test_bad_arguments(tmp_path, kwargs, msg):
    with pytest.raises(UsageError, match=msg):
        synthesize(tmp_path / "x", **{"classes": 2, "per_class": 2, "size": 16, **kwargs})
    assert not (tmp_path / "x").exists()


def test_all_fifty_categories_and_preview(tmp_path):
    out = synthesize(tmp_path / "all", classes=50, per_class=1, size=24, preview=tmp_path / "sheet.png")
    labels = {int(line.split()[1]) for line in (out / "Anno/list_category_img.txt").read_text().splitlines()[2:]}
    assert labels == set(range(1, 51))
    with Image.open(tmp_path / "sheet.png") as im:
        assert im.format == "PNG" and im.height >= 50 * 24
