"""torchrun entry point for the DDP tests: the real fopt CLI, plus two test-only hooks.

- registers ``tiny_nobn``, a BatchNorm-free CNN: with BatchNorm each DDP process normalises
  with its own half of the global batch (SyncBatchNorm needs CUDA), so only a BN-free model can
  show that DDP and one process with the same global batch compute the same training step;
- FOPT_TEST_FAIL_RANK=r makes rank r raise in its first evaluation, while the other ranks
  wait for it in a collective: the job must end with a clear message, not hang;
- FOPT_TEST_HANG_RANK=r makes rank r hang there instead: the others' collective timeout
  (--dist-timeout) must end the job.
"""

from __future__ import annotations

import os
import sys


def register_tiny_nobn() -> None:
    from fopt.models import MODELS, ModelEntry

    if "tiny_nobn" in MODELS:
        return

    def build(num_classes: int, dropout: float | None):
        import torch.nn as nn

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1), nn.ReLU(inplace=True))

        return nn.Sequential(block(3, 16), block(16, 32), block(32, 64), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(64, num_classes))

    MODELS.add("tiny_nobn", ModelEntry("tiny_nobn", build, 32, None, "test only: tiny without BN"))


def inject_failure() -> None:
    import time

    import fopt.train.engine as engine

    rank = os.environ.get("RANK")

    def failing_evaluate(*args, **kwargs):
        raise RuntimeError("injected test failure")

    def hanging_evaluate(*args, **kwargs):
        time.sleep(3600)

    if rank is not None and rank == os.environ.get("FOPT_TEST_FAIL_RANK"):
        engine.evaluate = failing_evaluate
    if rank is not None and rank == os.environ.get("FOPT_TEST_HANG_RANK"):
        engine.evaluate = hanging_evaluate


if __name__ == "__main__":
    register_tiny_nobn()
    inject_failure()
    from fopt.cli import main

    sys.argv[0] = "fopt"
    main()
