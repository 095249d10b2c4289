"""Static analysis of an ONNX graph; nothing here is timed.

`graph` prepares and indexes the graph, `counting` gives per-node params, MACs, FLOPs and bytes,
`receptive` the receptive field, `devices` the datasheet ceilings, `roofline` the naive and
roofline estimates from both, and `run.analyze` does all of it for a model or artifact.
"""
