"""DatasetTable, ImageTableDataset, transforms and the calibration/batch loaders."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from fopt.data.calibration import calibration_batch, iter_batches, sample_balanced
from fopt.data.datasets import DatasetTable, ImageTableDataset
from fopt.data.transforms import DEFAULT_MEAN, DEFAULT_STD, build_transform
from fopt.errors import DataError, InputError, UsageError


def test_table_load(synth_dataset, synth_raw):
    t = DatasetTable.load(synth_dataset)
    assert t.root == synth_raw.resolve()
    assert t.class_names == ["Blouse", "Tank", "Tee", "Shorts", "Skirt", "Dress"]
    assert len(t.df) == 120 and list(t.df.columns) == ["path", "label", "label_name", "split"]
    parts = [t.split(s) for s in ("train", "val", "test")]
    assert sum(map(len, parts)) == 120 and all(len(p) for p in parts)
    assert all(p.is_file() for p in t.abs_paths("val"))
    assert t.counts()["Dress"] == {s: int((t.split(s).label_name == "Dress").sum()) for s in ("train", "val", "test")}
    with pytest.raises(InputError, match="unknown split 'dev'"):
        t.split("dev")


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "dataset.csv").unlink(), r"dataset\.csv: missing"),
    (lambda d: (d / "mapping.json").unlink(), r"mapping\.json: missing"),
    (lambda d: (d / "mapping.json").write_text("{not json"), r"mapping\.json: not valid JSON"),
    (lambda d: (d / "mapping.json").write_text('{"classes": []}'), r"mapping\.json: malformed"),
    (lambda d: (d / "dataset.csv").write_text("path,label\nx.jpg,0\n"), r"missing column\(s\) label_name, split"),
    (lambda d: _edit_csv(d, 3, lambda f: [f[0], "99", f[2], f[3]]), r"dataset\.csv:3: label 99 is outside 0\.\.5"),
    (lambda d: _edit_csv(d, 2, lambda f: [f[0], "x", f[2], f[3]]), r"dataset\.csv:2: label 'x' is not an integer"),
    (lambda d: _edit_csv(d, 4, lambda f: [f[0], f[1], "Parka", f[3]]), r"dataset\.csv:4: label \d is '\w+' in mapping\.json, but the row says 'Parka'"),
    (lambda d: _edit_csv(d, 5, lambda f: [f[0], f[1], f[2], "dev"]), r"dataset\.csv:5: split 'dev'"),
    (lambda d: _edit_mapping(d, root="/nonexistent/raw"), r"image root /nonexistent/raw does not exist"),
    (lambda d: (d / "dataset.csv").write_text("path,label,label_name,split\n"), r"dataset\.csv: has no rows"),
])
def test_table_errors_name_the_file(synth_dataset, tmp_path, damage, message):
    d = tmp_path / "ds"
    shutil.copytree(synth_dataset, d)
    damage(d)
    with pytest.raises((InputError, DataError), match=message):
        DatasetTable.load(d)


def _edit_csv(d, line_no, fn):
    lines = (d / "dataset.csv").read_text().splitlines()
    lines[line_no - 1] = ",".join(fn(lines[line_no - 1].split(",")))
    (d / "dataset.csv").write_text("\n".join(lines) + "\n")


def _edit_mapping(d, **kw):
    m = json.loads((d / "mapping.json").read_text())
    m.update(kw)
    (d / "mapping.json").write_text(json.dumps(m))


def test_not_a_dataset_folder(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        DatasetTable.load(tmp_path / "nope")


def test_dataset_items_and_dataloader(synth_dataset):
    tf = build_transform(32, DEFAULT_MEAN, DEFAULT_STD, train=True)
    ds = ImageTableDataset(synth_dataset, "train", tf)
    t = DatasetTable.load(synth_dataset)
    assert ds.paths == t.split("train").path.tolist() and ds.labels == t.split("train").label.tolist()
    x, y = ds[0]
    assert x.dtype == torch.float32 and tuple(x.shape) == (3, 32, 32) and isinstance(y, int)
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    xb, yb = next(iter(torch.utils.data.DataLoader(ds, batch_size=5, shuffle=False)))
    assert tuple(xb.shape) == (5, 3, 32, 32) and yb.tolist() == ds.labels[:5]


def test_transforms_normalise_and_presets():
    white = Image.new("RGB", (50, 40), (255, 255, 255))
    grey = Image.new("RGB", (50, 40), (0, 128, 255))
    ev = build_transform(24, train=False)
    assert torch.allclose(ev(white), torch.ones(3, 24, 24))             # (1 - 0.5) / 0.5
    g = ev(grey)
    assert torch.allclose(g[:, 5, 5], torch.tensor([-1.0, 128 / 255 * 2 - 1, 1.0]), atol=1e-6)
    custom = build_transform(8, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))(grey)
    assert torch.allclose(custom[:, 0, 0], torch.tensor([0.0, 128 / 255, 1.0]), atol=1e-6)
    # the train preset is random, the eval preset is not
    torch.manual_seed(0)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    tr = build_transform(24, train=True)
    assert not torch.equal(tr(img), tr(img))
    assert torch.equal(ev(img), ev(img))


def test_sample_balanced_round_robin():
    labels = [0] * 10 + [1] * 2 + [2] * 5
    idx = sample_balanced(labels, 9, seed=0)
    got = np.bincount(np.asarray(labels)[idx], minlength=3).tolist()
    assert got == [4, 2, 3] and len(set(idx)) == 9
    assert sample_balanced(labels, 9, seed=0) == idx and sample_balanced(labels, 9, seed=1) != idx


def test_calibration_batch(synth_dataset):
    a = calibration_batch(synth_dataset, 12, 32, DEFAULT_MEAN, DEFAULT_STD, split="train", seed=0)
    assert a.dtype == np.float32 and a.shape == (12, 3, 32, 32)
    assert np.array_equal(a, calibration_batch(synth_dataset, 12, 32, seed=0))
    assert not np.array_equal(a, calibration_batch(synth_dataset, 12, 32, seed=1))
    # real images, not noise: the eval preset resizes the 8-bit PIL image (the result is still
    # 8-bit) before ToTensor (/255) and Normalize, so undoing the normalisation lands every value
    # on the 1/255 grid; a float resize, a missing /255 or a wrong mean/std would leave the grid
    mean = np.asarray(DEFAULT_MEAN, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(DEFAULT_STD, np.float32).reshape(1, 3, 1, 1)
    levels = (a * std + mean) * 255
    assert np.abs(levels - np.round(levels)).max() < 1e-4
    assert levels.min() > -1e-4 and levels.max() < 255 + 1e-4
    assert len(np.unique(np.round(levels))) > 50 and a.std() > 0.1   # and not a flat image
    noise = np.random.default_rng(0).standard_normal(a.shape).astype(np.float32)
    off_grid = (noise * std + mean) * 255                                # the check can fail
    assert np.abs(off_grid - np.round(off_grid)).max() > 0.4
    n_train = len(DatasetTable.load(synth_dataset).split("train"))
    with pytest.raises(DataError, match=f"has only {n_train}"):
        calibration_batch(synth_dataset, n_train + 1, 32)
    with pytest.raises(UsageError):
        calibration_batch(synth_dataset, 0, 32)


def test_iter_batches_cover_the_split_in_order(synth_dataset):
    t = DatasetTable.load(synth_dataset)
    batches = list(iter_batches(synth_dataset, "val", 32, DEFAULT_MEAN, DEFAULT_STD, batch_size=7))
    labels = np.concatenate([lab for _, lab in batches])
    assert labels.tolist() == t.split("val").label.tolist()
    assert all(b.dtype == np.float32 and b.shape[1:] == (3, 32, 32) for b, _ in batches)
    assert [len(b) for b, _ in batches][:-1] == [7] * (len(batches) - 1)
    # the same images as the Dataset with the eval transform
    ds = ImageTableDataset(synth_dataset, "val", build_transform(32, train=False))
    assert np.allclose(batches[0][0][3], ds[3][0].numpy())
    limited = list(iter_batches(synth_dataset, "val", 32, batch_size=4, limit=6))
    assert [len(b) for b, _ in limited] == [4, 2]


def test_relative_or_overridden_root(synth_dataset, synth_raw, tmp_path):
    d = tmp_path / "ds"
    shutil.copytree(synth_dataset, d)
    shutil.copytree(synth_raw, tmp_path / "moved")
    _edit_mapping(d, root="../moved")                      # relative to the dataset folder
    assert DatasetTable.load(d).root == (tmp_path / "moved").resolve()
    _edit_mapping(d, root="/nonexistent")
    t = DatasetTable.load(d, root=tmp_path / "moved")    # a dataset moved to another machine
    assert all(p.is_file() for p in t.abs_paths("test"))
