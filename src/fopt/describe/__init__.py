"""What fopt knows about any model file: its own card, or one read from a file fopt did not make.

Every command feeds a model through its card (input size, normalisation, class names). Files that
fopt wrote carry one. For any other ONNX or TorchScript file, `describe_model` builds the card
from the file itself (input name, rank and static dims, element type, output width) and from the
user's `ModelHints` (``--input-shape``, ``--dtype``, ``--mean/--std`` or ``--preset``,
``--classes``), and records in it what was assumed. `fopt card` writes that card beside the file
so that later commands need no options.

Import from the submodules (`fopt.describe.hints`: options, light enough for `--help`;
`fopt.describe.infer`: reading files).
"""
