"""`build_dataset` on the synthetic tree, image folders, Fashion-MNIST and real DeepFashion images."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fopt.data.build import FMNIST_CLASSES, build_dataset
from fopt.data.datasets import DatasetTable, ImageTableDataset
from fopt.errors import DataError


def _annotations(raw):
    lab = dict(line.split() for line in (raw / "Anno/list_category_img.txt").read_text().splitlines()[2:])
    part = dict(line.split() for line in (raw / "Eval/list_eval_partition.txt").read_text().splitlines()[2:])
    return {p: int(v) for p, v in lab.items()}, part


def test_synth_table_matches_annotations(tiny_raw, tmp_path):
    res = build_dataset(tiny_raw, tmp_path / "ds", plot=tmp_path / "classes.png")
    labels, part = _annotations(tiny_raw)
    df = pd.read_csv(tmp_path / "ds" / "dataset.csv")
    assert list(df.columns) == ["path", "label", "label_name", "split"]
    assert res.class_names == ["Blouse", "Tee", "Dress"]          # benchmark labels 3, 18, 41
    assert res.mapping["source_labels"] == [3, 18, 41]
    assert res.mapping["category_types"] == [1, 1, 3]
    assert res.mapping["root"] == str(tiny_raw.resolve())
    assert len(df) == len(labels) == 36
    src_of = {0: 3, 1: 18, 2: 41}
    for row in df.itertuples():
        rel = row.path.removeprefix("Img/")
        assert row.path.startswith("Img/img/") and (tiny_raw / row.path).is_file()
        assert src_of[row.label] == labels[rel]
        assert res.class_names[row.label] == row.label_name
        assert row.split == part[rel]                                # official partition kept
    for name, c in res.counts.items():
        assert c["total"] == 12 == c["train"] + c["val"] + c["test"]
        assert c["val"] >= 1 and c["test"] >= 1
    assert res.mapping["partition"] == "official" and res.warnings == []
    with Image.open(tmp_path / "classes.png") as im:
        assert im.format == "PNG"


def test_hand_made_copy_without_img_folder(raw_copy, tmp_path):
    shutil.move(raw_copy / "Img" / "img", raw_copy / "img")
    (raw_copy / "Img").rmdir()
    df = build_dataset(raw_copy, tmp_path / "ds").table
    assert len(df) == 36 and df.path.str.startswith("img/").all()


def test_cap_threshold_and_stratified_split_without_partition(raw_copy, tmp_path):
    (raw_copy / "Eval" / "list_eval_partition.txt").unlink()
    # leave Dress (label 41) with 5 images so the threshold drops it
    img_file = raw_copy / "Anno/list_category_img.txt"
    lines = img_file.read_text().splitlines()
    rows = [r for r in lines[2:] if not r.endswith(" 41")] + [r for r in lines[2:] if r.endswith(" 41")][:5]
    img_file.write_text("\n".join([str(len(rows)), lines[1], *rows]) + "\n")

    a = build_dataset(raw_copy, tmp_path / "a", sampling_threshold=6, max_per_class=10, seed=1)
    assert a.class_names == ["Blouse", "Tee"] and a.dropped == {"Dress": 5}
    assert sorted(a.table.label.unique()) == [0, 1]
    assert any("Dress" in w for w in a.warnings)
    for c in a.counts.values():   # 10 per class, 80/10/10 within each class
        assert (c["train"], c["val"], c["test"]) == (8, 1, 1)
    assert a.mapping["partition"] == "stratified 80/10/10"
    b = build_dataset(raw_copy, tmp_path / "b", sampling_threshold=6, max_per_class=10, seed=1)
    assert a.table.equals(b.table)                                   # deterministic per seed
    c = build_dataset(raw_copy, tmp_path / "c", sampling_threshold=6, max_per_class=10, seed=2)
    assert set(c.table.path) != set(a.table.path) or not c.table.split.equals(a.table.split)
    assert set(c.table.path) <= {"Img/" + r.split()[0] for r in rows}
    with pytest.raises(DataError, match="leaves 0 class"):
        build_dataset(raw_copy, tmp_path / "d", sampling_threshold=13)
    # the threshold counts usable images before the cap
    capped = build_dataset(raw_copy, tmp_path / "e", sampling_threshold=12, max_per_class=3)
    assert capped.class_names == ["Blouse", "Tee"] and len(capped.table) == 6


def test_missing_and_undecodable_images_are_skipped_or_strict(raw_copy, tmp_path, snapshot):
    jpgs = sorted((raw_copy / "Img/img").rglob("*.jpg"))
    jpgs[0].unlink()
    jpgs[1].write_bytes(jpgs[1].read_bytes()[:200])                     # truncated JPEG
    res = build_dataset(raw_copy, tmp_path / "ds")
    assert len(res.table) == 34
    reasons = sorted(s["reason"].split(":")[0] for s in res.skipped)
    assert reasons == ["missing", "undecodable"]
    assert all("list_category_img.txt:" in s["origin"] for s in res.skipped)
    assert any("2 image file(s) missing or undecodable" in w for w in res.warnings)
    out = tmp_path / "strict"
    with pytest.raises(DataError, match="2 image file"):
        build_dataset(raw_copy, out, strict=True)
    assert snapshot(out) == {}


def _image_folder(tiny_raw, dst, split_layout=False):
    labels, part = _annotations(tiny_raw)
    names = {3: "blouse", 18: "tee", 41: "dress"}
    for rel, lab in labels.items():
        sub = dst / (part[rel] if split_layout else "") / names[lab]
        sub.mkdir(parents=True, exist_ok=True)
        shutil.copy(tiny_raw / "Img" / rel, sub / rel.replace("/", "_"))
    return part


def test_image_folder_plain_and_split_layout(tiny_raw, tmp_path):
    _image_folder(tiny_raw, tmp_path / "flat")
    flat = build_dataset(tmp_path / "flat", tmp_path / "f")
    assert flat.format == "imagefolder" and flat.class_names == ["blouse", "dress", "tee"]
    assert flat.mapping["partition"] == "stratified 80/10/10" and len(flat.table) == 36
    assert all((tmp_path / "flat" / p).is_file() for p in flat.table.path)

    part = _image_folder(tiny_raw, tmp_path / "split", split_layout=True)
    res = build_dataset(tmp_path / "split", tmp_path / "s", fmt="imagefolder")
    assert res.mapping["partition"] == "official"
    assert (res.table.split == res.table.path.str.split("/").str[0]).all()
    assert res.mapping["split_totals"]["val"] == sum(v == "val" for v in part.values())


def test_fashion_mnist_idx_becomes_png_files(fake_fmnist, tmp_path):
    res = build_dataset(fake_fmnist, tmp_path / "ds")
    assert res.format == "fashion-mnist" and res.class_names == list(FMNIST_CLASSES)
    for c in res.counts.values():
        assert (c["train"], c["val"], c["test"]) == (9, 1, 3)     # official test kept, val from train
    assert res.table[res.table.split == "test"].path.str.startswith("images/test/").all()
    assert res.table[res.table.split != "test"].path.str.startswith("images/train/").all()
    with gzip.open(fake_fmnist / "FashionMNIST/raw/train-images-idx3-ubyte.gz") as f:
        first = np.frombuffer(f.read(), np.uint8, offset=16)[:784].reshape(28, 28)
    row = res.table[res.table.path == "images/train/00000.png"].iloc[0]
    assert row.label == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "ds" / row.path)), first)
    ds = ImageTableDataset(tmp_path / "ds", "test")
    x, y = ds[0]
    assert tuple(x.shape) == (3, 28, 28) and y == ds.labels[0]


def test_real_fashion_mnist_in_place(shared_data, tmp_path):
    raw = shared_data / "fashion-mnist"
    if not (raw / "FashionMNIST/raw/train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST is not in the shared data folder")
    res = build_dataset(raw, tmp_path / "ds", max_per_class=20, seed=0)
    assert res.class_names == list(FMNIST_CLASSES)
    assert all(c["total"] == 20 for c in res.counts.values())
    t = res.table
    assert set(t.split) == {"train", "val", "test"}
    assert t[t.split == "test"].path.str.startswith("images/test/").all()
    table = DatasetTable.load(tmp_path / "ds")
    assert table.root == (tmp_path / "ds").resolve()
    with Image.open(table.abs_paths("train")[0]) as im:
        assert im.size == (28, 28) and im.mode == "L"
    # the converted pixels are the IDX pixels: image k of the train file is images/train/k.png
    k = int(t[t.split == "train"].path.iloc[0].split("/")[-1].split(".")[0])
    with gzip.open(raw / "FashionMNIST/raw/train-images-idx3-ubyte.gz") as f:
        f.seek(16 + 784 * k)
        expected = np.frombuffer(f.read(784), np.uint8).reshape(28, 28)
    assert np.array_equal(np.asarray(Image.open(table.abs_paths("train")[0])), expected)


def test_real_deepfashion_inshop_minibatch(shared_data, tmp_path):
    raw = shared_data / "deepfashion" / "inshop_minibatch"
    if not raw.is_dir():
        pytest.skip("DeepFashion minibatch is not in the shared data folder")
    res = build_dataset(raw, tmp_path / "ds")
    assert res.format == "deepfashion" and res.class_names == ["Blouses_Shirts", "Jackets_Vests", "Denim", "Pants"]
    totals = res.mapping["split_totals"]
    assert (totals["train"], totals["val"], totals["test"], totals["total"]) == (95, 19, 16, 130)
    assert [res.counts[n]["total"] for n in res.class_names] == [29, 49, 32, 20]
    assert res.skipped == [] and res.warnings == []
    # no item (id_XXXXXXXX folder) in two splits
    items = res.table.assign(item=res.table.path.str.split("/").str[-2]).groupby("item").split.nunique()
    assert (items == 1).all()
    ds = ImageTableDataset(tmp_path / "ds", "test")
    x, _ = ds[0]
    assert tuple(x.shape) == (3, 256, 256)
