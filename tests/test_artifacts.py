import json

import pytest

from fopt.artifacts import (
    InputSpec,
    atomic_path,
    card_path,
    detect_format,
    make_card,
    read_card,
    sha256_file,
    update_card_metrics,
    write_card,
    write_json_atomic,
)
from fopt.errors import InputError, OutputExistsError


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "model.onnx"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_replaces_only_when_complete(tmp_path):
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
        assert target.read_bytes() == b"old"
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_atomic_path_refuses_empty_output_and_existing_without_overwrite(tmp_path):
    target = tmp_path / "empty.bin"
    with pytest.raises(OSError, match="nothing was written"):
        with atomic_path(target):
            pass
    assert not target.exists()
    target.write_bytes(b"x")
    with pytest.raises(OutputExistsError):
        with atomic_path(target, overwrite=False):
            pass


def test_card_roundtrip_records_parent_hash_and_own_hash(tmp_path):
    parent = tmp_path / "best.pt"
    parent.write_bytes(b"parent-bytes")
    art = tmp_path / "model.onnx"
    art.write_bytes(b"onnx-bytes")
    spec = InputSpec(size=64, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))
    card = make_card(kind="onnx", format="onnx", precision="fp32", input_spec=spec,
                     class_names=["a", "b"], parent=parent, opset=17)
    write_card(art, card)
    assert card_path(art).name == "model.onnx.json"
    back = read_card(art)
    assert back["parent"]["sha256"] == sha256_file(parent)
    assert back["sha256"] == sha256_file(art)
    assert back["size_bytes"] == len(b"onnx-bytes")
    assert InputSpec.from_dict(back["input_spec"]) == spec
    assert back["versions"]["fopt"]
    update_card_metrics(art, {"accuracy": 0.5})
    assert read_card(art)["metrics"]["accuracy"] == 0.5


def test_make_card_rejects_unknown_format_and_precision():
    with pytest.raises(ValueError):
        make_card(kind="x", format="tflite", precision="fp32", input_spec=InputSpec(8), class_names=[])
    with pytest.raises(ValueError):
        make_card(kind="x", format="onnx", precision="int4", input_spec=InputSpec(8), class_names=[])


def test_read_card_errors(tmp_path):
    art = tmp_path / "m.onnx"
    with pytest.raises(InputError, match="no artifact card"):
        read_card(art)
    assert read_card(art, required=False) is None
    card_path(art).write_text("{not json")
    with pytest.raises(InputError, match="unreadable"):
        read_card(art)
    write_json_atomic(card_path(art), {"hello": 1})
    with pytest.raises(InputError, match="not a fopt artifact card"):
        read_card(art)


def test_detect_format_by_content(tmp_path, tiny_checkpoint):
    assert detect_format(tiny_checkpoint) == "checkpoint"
    onnx_file = tmp_path / "a.onnx"
    onnx_file.write_bytes(b"\x08\x07")
    assert detect_format(onnx_file) == "onnx"
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"garbage")
    with pytest.raises(InputError, match="unknown artifact format"):
        detect_format(junk)
    with pytest.raises(InputError, match="no such file"):
        detect_format(tmp_path / "missing.pt")
    with pytest.raises(InputError, match="is a folder"):
        detect_format(tmp_path)


def test_detect_format_checkpoint_without_card(tmp_path, tiny_checkpoint):
    import shutil

    copy = tmp_path / "nocard.pt"
    shutil.copy(tiny_checkpoint, copy)
    assert detect_format(copy) == "checkpoint"
    json.loads(card_path(tiny_checkpoint).read_text())  # sidecar is valid JSON
