"""ONNX files from strangers: external-data locations must stay inside the model's folder."""

from __future__ import annotations

import numpy as np
import pytest

from fopt.errors import InputError
from fopt.onnxgraph import check_external_data, load_onnx


def _model_with_external_weight(folder, location: str):
    """A one-Add graph whose constant operand is stored at `location` (relative to `folder`)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(4, dtype=np.float32), "w")
    w.data_location = TensorProto.EXTERNAL
    w.ClearField("raw_data")
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        w.external_data.add(key=key, value=value)
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [w])
    path = folder / "m.onnx"
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_weights_inside_the_folder_load(tmp_path):
    (tmp_path / "w.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    model = load_onnx(_model_with_external_weight(tmp_path, "w.bin"))
    from onnx import numpy_helper

    assert numpy_helper.to_array(model.graph.initializer[0]).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/hostname", "sub/../../secret.bin", "link.bin"])
def test_locations_leaving_the_folder_are_refused_before_anything_reads_them(tmp_path, location):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.ones(4, dtype=np.float32).tobytes())
    (model_dir / "link.bin").symlink_to(secret)           # a symlink out counts as leaving
    path = _model_with_external_weight(model_dir, location)
    with pytest.raises(InputError, match="outside the model's folder"):
        check_external_data(path)
    with pytest.raises(InputError, match="outside the model's folder"):
        load_onnx(path)
    with pytest.raises(InputError, match="outside the model's folder"):
        load_onnx(path, load_weights=False)
