"""Tiny hand-built ONNX graphs for the analyze tests (counts are known by arithmetic)."""

from __future__ import annotations

import warnings

import numpy as np


class GraphBuilder:
    """Build a small ONNX graph node by node; weights are random float32 initializers."""

    def __init__(self, shape=("batch", 3, 32, 32), opset: int = 17, name: str = "x"):
        from onnx import TensorProto, helper

        self.helper = helper
        self.opset = opset
        self.inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))]
        self.nodes = []
        self.inits = []
        self.current = name
        self.channels = shape[1]
        self._n = 0

    def _name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def init(self, array: np.ndarray, prefix: str = "w") -> str:
        from onnx import numpy_helper

        name = self._name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, domain: str = "", **attrs) -> str:
        outs = [self._name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(self.helper.make_node(op_type, inputs, outs, name=self._name(op_type + "_"),
                                                domain=domain or None, **attrs))
        self.current = outs[0]
        return outs[0]

    def conv(self, cout: int, k, *, stride=1, pads=None, group: int = 1, dilation=1, bias: bool = True,
             auto_pad: str | None = None, src: str | None = None, cin: int | None = None) -> str:
        src = src or self.current
        cin = cin or self.channels
        kh, kw = (k, k) if isinstance(k, int) else k
        w = self.init(np.random.rand(cout, cin // group, kh, kw).astype(np.float32))
        ins = [src, w]
        if bias:
            ins.append(self.init(np.random.rand(cout).astype(np.float32), "b"))
        attrs = {"strides": [stride, stride] if isinstance(stride, int) else list(stride),
                 "dilations": [dilation, dilation] if isinstance(dilation, int) else list(dilation),
                 "group": group, "kernel_shape": [kh, kw]}
        if auto_pad:
            attrs["auto_pad"] = auto_pad
        else:
            attrs["pads"] = list(pads) if pads is not None else [kh // 2, kw // 2, kh // 2, kw // 2]
        out = self.op("Conv", ins, **attrs)
        self.channels = cout
        return out

    def build(self, outputs: list[str] | None = None):
        from onnx import TensorProto, helper

        outputs = outputs or [self.current]
        graph = helper.make_graph(self.nodes, "g", self.inputs,
                                  [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                                  initializer=self.inits)
        domains = {n.domain for n in self.nodes if n.domain} | {"com.microsoft"}
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)] +
                                  [helper.make_opsetid(d, 1) for d in sorted(domains)])
        model.ir_version = 8
        return model


def export_preserving_bn(module, img_size: int):
    """Export like analyze does for modules (BatchNorm kept)."""
    from fopt.analyze.run import module_to_analysis_onnx

    return module_to_analysis_onnx(module, img_size)


def save_onnx(model, path) -> str:
    import onnx

    onnx.save(model, str(path))
    return str(path)


def quiet_torch_export(module, img_size: int):
    """A deployment-style export (BatchNorm folded), i.e. what `fopt export` writes."""
    from fopt.export.onnx import model_to_onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model_to_onnx(module, img_size)


def calibration_reader(input_name: str, shape, n: int = 4, seed: int = 0):
    from onnxruntime.quantization import CalibrationDataReader

    rng = np.random.default_rng(seed)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{input_name: rng.random(shape, dtype=np.float32)} for _ in range(n)])

        def get_next(self):
            return next(self.items, None)

    return Reader()
