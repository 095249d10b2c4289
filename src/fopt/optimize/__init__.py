"""ONNX -> INT8 (dynamic, static QDQ), FP16 and TensorRT engines, each with its accuracy cost.

Public entry points: `fopt.optimize.run.optimize_onnx` (everything `fopt optimize` does), the
pure functions `onnx_to_int8_dynamic`, `onnx_to_int8_static` (quantize.py), `onnx_to_fp16`
(fp16.py), `onnx_to_engine` (tensorrt.py), and the method registry `fopt.optimize.base.METHODS`.
Heavy libraries are imported inside those functions only.
"""
