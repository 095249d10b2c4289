"""The dataset table written by `fopt data build`, and the torch Dataset over it.

A dataset folder holds ``dataset.csv`` (path,label,label_name,split) and ``mapping.json``
(``root``: the folder the paths are relative to; ``classes``: names indexed by label; counts).
`DatasetTable` loads and checks both; `ImageTableDataset` decodes images with PIL as RGB
(grey Fashion-MNIST becomes 3 equal channels) and applies a transform from
`fopt.data.transforms`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from fopt.errors import DataError, InputError, first_line

SPLITS = ("train", "val", "test")
COLUMNS = ("path", "label", "label_name", "split")


@dataclass
class DatasetTable:
    dir: Path
    df: pd.DataFrame
    root: Path
    class_names: list[str]
    mapping: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, dataset_dir: str | os.PathLike, root: str | os.PathLike | None = None) -> "DatasetTable":
        """Read and check DATASET/dataset.csv and DATASET/mapping.json.

        `root` overrides mapping.json's root (a dataset moved to another machine). A relative
        root in mapping.json is taken relative to the dataset folder.
        """
        d = Path(dataset_dir)
        if not d.is_dir():
            raise InputError(f"{d}: dataset folder does not exist (make one with `fopt data build`)")
        csv_path, map_path = d / "dataset.csv", d / "mapping.json"
        for p in (csv_path, map_path):
            if not p.is_file():
                raise InputError(f"{p}: missing; {d} is not a dataset folder (make one with `fopt data build`)")
        mapping = _read_mapping(map_path)
        class_names = mapping["classes"]
        df = _read_table(csv_path, map_path.name, class_names)
        if root is None:
            root_path = Path(mapping["root"])
            if not root_path.is_absolute():
                root_path = (d / root_path).resolve()
        else:
            root_path = Path(root).resolve()
        if not root_path.is_dir():
            raise DataError(f"{map_path}: image root {root_path} does not exist (moved? pass the new root)")
        return cls(dir=d, df=df, root=root_path, class_names=class_names, mapping=mapping)

    def warnings(self) -> list[str]:
        """What a trainer should hear about the table: classes with no train image."""
        untrained = [n for n, c in self.counts().items() if c["train"] == 0]
        if not untrained or not (self.df.split == "train").any():
            return []
        return [f"{self.dir / 'dataset.csv'}: {len(untrained)} class(es) have no train image, so a model "
                f"cannot learn them: {', '.join(untrained)}"]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split(self, name: str) -> pd.DataFrame:
        """Rows of one split ("train", "val", "test"; "all" for every row)."""
        if name == "all":
            return self.df.reset_index(drop=True)
        if name not in SPLITS:
            raise InputError(f"unknown split {name!r}: choose train, val, test or all")
        return self.df[self.df.split == name].reset_index(drop=True)

    def abs_paths(self, split: str = "all") -> list[Path]:
        return [self.root / p for p in self.split(split)["path"]]

    def counts(self) -> dict[str, dict[str, int]]:
        """class name -> split -> number of images."""
        out = {n: {s: 0 for s in SPLITS} for n in self.class_names}
        for (name, split), n in self.df.groupby(["label_name", "split"]).size().items():
            out[name][split] = int(n)
        return out


def _read_mapping(map_path: Path) -> dict[str, Any]:
    """mapping.json, checked: a 'root' path string and a 'classes' list of unique names."""
    try:
        mapping = json.loads(map_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{map_path}: not valid JSON ({first_line(e)})") from None
    except OSError as e:
        raise DataError(f"{map_path}: cannot read ({e.strerror})") from None
    if not isinstance(mapping, dict) or not isinstance(mapping.get("classes"), list) or "root" not in mapping:
        raise DataError(f"{map_path}: malformed (needs 'root' and a 'classes' list)")
    root = mapping["root"]
    if not isinstance(root, str) or not root.strip() or "\0" in root:
        raise DataError(f"{map_path}: malformed 'root' {json.dumps(root)[:60]} (expected the image folder's path)")
    classes = mapping["classes"]
    if not classes or not all(isinstance(c, str) and c for c in classes):
        raise DataError(f"{map_path}: malformed 'classes' (expected a list of class names)")
    if len(set(classes)) != len(classes):
        dup = next(c for i, c in enumerate(classes) if c in classes[:i])
        raise DataError(f"{map_path}: class {dup[:60]!r} is listed twice in 'classes'")
    return mapping


def _read_table(csv_path: Path, map_name: str, class_names: list[str]) -> pd.DataFrame:
    """dataset.csv, checked row by row against the class list; labels become ints."""
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{csv_path}: not a readable CSV ({' '.join(str(e).split())[:200]})") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{csv_path}: missing column(s) {', '.join(missing)} (expected {','.join(COLUMNS)})")
    df = df[list(COLUMNS)].copy()
    if df.empty:
        raise DataError(f"{csv_path}: has no rows")
    labels = []
    for i, (path, lab, name, split) in enumerate(df.itertuples(index=False, name=None), start=2):
        text = lab.strip()
        if text.endswith(".0"):               # a table saved through a float column: 3.0 is 3
            text = text[:-2]
        if not re.fullmatch(r"-?[0-9]{1,12}", text):
            raise DataError(f"{csv_path}:{i}: label {lab[:40]!r} is not an integer")
        label = int(text)
        if not 0 <= label < len(class_names):
            raise DataError(f"{csv_path}:{i}: label {label} is outside 0..{len(class_names) - 1} ({map_name} classes)")
        if class_names[label] != name:
            raise DataError(f"{csv_path}:{i}: label {label} is {class_names[label]!r} in {map_name}, "
                            f"but the row says {name[:60]!r}")
        if split not in SPLITS:
            raise DataError(f"{csv_path}:{i}: split {split[:40]!r} must be train, val or test")
        if not path or "\0" in path:
            raise DataError(f"{csv_path}:{i}: empty or malformed image path")
        labels.append(label)
    df["label"] = labels
    return df


def load_image(path: str | os.PathLike, draft_size: int | None = None):
    """Decode an image as RGB PIL. `draft_size`: let JPEG decode at a reduced scale >= that size."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if draft_size:
                im.draft("RGB", (draft_size, draft_size))
            return im.convert("RGB")
    except FileNotFoundError as e:
        raise InputError(f"{path}: image file is missing") from e
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot decode image ({' '.join(str(e).split())})") from e


def _to_tensor_transform():
    from torchvision import transforms as T

    return T.ToTensor()


try:  # the Dataset base class; the module stays importable for table-only use without torch
    from torch.utils.data import Dataset as _TorchDataset
except ImportError:  # pragma: no cover - torch is a core dependency
    _TorchDataset = object  # type: ignore[misc,assignment]


class ImageTableDataset(_TorchDataset):
    """torch Dataset over one split of a dataset folder: items are (CHW float32 tensor, int label).

    `transform` maps a PIL RGB image to a tensor (`fopt.data.transforms.build_transform`);
    None gives an un-normalised [0, 1] tensor at the image's own size. `draft_size` lets JPEG
    decoding skip detail the transform would throw away (pass the model input size).
    """

    def __init__(self, dataset_dir: str | os.PathLike | DatasetTable, split: str = "train",
                 transform: Callable | None = None, draft_size: int | None = None):
        self.table = dataset_dir if isinstance(dataset_dir, DatasetTable) else DatasetTable.load(dataset_dir)
        rows = self.table.split(split)
        self.split = split
        self.root = self.table.root
        self.paths: list[str] = rows["path"].tolist()
        self.labels: list[int] = [int(x) for x in rows["label"]]
        self.class_names = self.table.class_names
        self.transform = transform if transform is not None else _to_tensor_transform()
        self.draft_size = draft_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        img = load_image(self.root / self.paths[i], self.draft_size)
        return self.transform(img), self.labels[i]
