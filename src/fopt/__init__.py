"""fopt: train, export, optimize and benchmark image classifiers for deployment.

The packages form layers, and imports point one way: down this list (`LAYERS`, top first).
A module may import from its own layer or any layer below, never from one above, and no two
modules import each other, directly or round a circle (`tests/test_architecture.py` fails on
either). The ``cli.py`` modules are entry points, not layers: each parses one command's options
and calls library functions, and nothing imports them (the root `fopt.cli` loads them by name).
"""

__version__ = "0.1.0"

# Top first. Each entry is a package or module prefix; a longer prefix wins over a shorter one
# (fopt.bench.measure is below fopt.bench.costmodel, which is below the rest of fopt.bench).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("fopt.track",),                         # experiment trackers observing the stages' outputs
    ("fopt.pipeline",),                      # all stages on one model; report, recommendation
    ("fopt.bench",),                         # bench runs: rows, the estimates beside them, report, plots
    ("fopt.bench.costmodel",),               # the calibrated latency model: probes, fit, prediction
    ("fopt.bench.measure",),                 # machine facts, process harness, profiles, page faults
    ("fopt.analyze",),                       # static graph analysis: counts, receptive field, roofline
    ("fopt.optimize",),                      # ONNX -> INT8, FP16, TensorRT engines
    ("fopt.export",),                        # checkpoint -> TorchScript, ONNX (parity-checked)
    ("fopt.train",),                         # training loop, DDP, training config
    ("fopt.evaluation",),                    # accuracy of any artifact through its runner
    ("fopt.describe",),                      # the card of any model file, foreign ones included
    ("fopt.runtime",),                       # one Runner per format; the timing loop
    ("fopt.data",),                          # dataset tables, synthetic data, transforms
    ("fopt.checkpoint", "fopt.onnxgraph", "fopt.models", "fopt.console", "fopt.workdir", "fopt.artifacts",
     "fopt.registry", "fopt.errors", "fopt"),  # foundation
)
