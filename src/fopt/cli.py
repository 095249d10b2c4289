"""The `fopt` command: one root group whose subcommands load lazily.

Each subpackage owns its own small ``cli.py``; this file only maps names to them, so
``fopt --help`` imports neither torch nor onnxruntime. This is also the one place that turns a
`FoptError` (or an OSError the user can fix: disk full, no permission) into a one-line message
and exit status 2.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from fopt import __version__
from fopt.errors import FoptError, environment_error_message

# name -> (module:attribute, one-line help shown by `fopt --help` without importing the module)
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("fopt.data.cli:data", "Build a dataset table from DeepFashion/image folders, or synthesize one."),
    "train": ("fopt.train.cli:train", "Train a registry model on a dataset; write checkpoints and reports."),
    "eval": ("fopt.train.cli:eval_cmd", "Accuracy, macro-F1 and per-class report of any artifact."),
    "export": ("fopt.export.cli:export", "Export a checkpoint (or timm/torchvision/your model + weights) to "
                                          "TorchScript and ONNX, parity-checked."),
    "optimize": ("fopt.optimize.cli:optimize", "INT8 (dynamic/static), FP16, OpenVINO IR and TensorRT from any "
                                              "ONNX model."),
    "analyze": ("fopt.analyze.cli:analyze", "Params, MACs, FLOPs, memory traffic, receptive field, roofline."),
    "bench": ("fopt.bench.cli:bench", "Measure latency/throughput beside the analytical estimate."),
    "pipeline": ("fopt.pipeline.cli:pipeline", "Run every stage on one or more models and write one report."),
    "report": ("fopt.pipeline.cli:report", "Rebuild the comparison report from existing pipeline runs."),
    "card": ("fopt.describe.cli:card", "Write (or --show) the card of a model fopt did not make."),
}


def _debug_enabled(ctx: click.Context | None) -> bool:
    if os.environ.get("FOPT_DEBUG"):
        return True
    root = ctx.find_root() if ctx else None
    return bool(root and root.params.get("debug"))


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        target = COMMANDS[name][0]
        module_name, attr = target.split(":")
        module = importlib.import_module(module_name)
        return getattr(module, attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_) for name, (_, help_) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FoptError as e:
            if _debug_enabled(ctx):
                raise
            msg = " ".join(str(e).split()) or type(e).__name__
            click.echo(f"error: {msg}", err=True)
            ctx.exit(e.exit_code)
        except OSError as e:  # a full disk or a missing permission is the user's to fix too
            msg = environment_error_message(e)
            if msg is None or _debug_enabled(ctx):
                raise
            click.echo(f"error: {' '.join(msg.split())}", err=True)
            ctx.exit(2)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="fopt")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
def cli(debug: bool) -> None:
    """fopt: train, export, optimize and benchmark image classifiers for deployment.

    Every model file fopt writes has a sidecar card (<file>.json) saying what it is and how to
    feed it, so any command takes any artifact; models from elsewhere take --input-shape,
    --preset and --classes (or `fopt card`).

    Example: fopt pipeline --model resnet18 --out artifacts/run1
    """


def main() -> None:
    cli(prog_name="fopt")


if __name__ == "__main__":
    sys.exit(main())
