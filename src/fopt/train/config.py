"""The training configuration: one dataclass, every default explained (nanoGPT's GPTConfig style).

Defaults follow the original study (Adam, lr 1e-3, batch 32, 256 px, normalisation 0.5/0.5/0.5,
model kept at its best validation macro-F1) unless a comment says otherwise.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from fopt.checkpoint import read_checkpoint
from fopt.errors import InputError, UsageError

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("cosine", "step", "plateau", "none")
DEVICES = ("auto", "cpu", "cuda")

# Options that only say *where/how* a run executes; a resumed run may change them. Everything
# else shapes the weights, so resuming with a different value would silently mix two runs.
RUNTIME_FIELDS = ("device", "workers", "experiments", "dist_timeout_s", "top_losses")


@dataclass
class TrainConfig:
    data: str                      # dataset folder (dataset.csv + mapping.json from `fopt data`)
    model: str                     # registry name (`fopt train --list-models`)
    out: str                       # run folder: checkpoints, history, reports
    epochs: int = 10               # full passes over the training split
    batch_size: int = 32           # images per step *per process* (global = this x world size)
    lr: float = 1e-3               # the study's Adam learning rate; not rescaled for DDP
    optimizer: str = "adam"        # adam | adamw | sgd (sgd uses momentum 0.9)
    weight_decay: float = 0.0      # L2 (adam/sgd) or decoupled (adamw) weight decay
    scheduler: str = "cosine"      # cosine (to 0 over `epochs`) | step (x0.1 every epochs//3) |
                                   # plateau (x0.1 after 2 epochs without val macro-F1 gain) | none
    img_size: int = 256            # square input side in px; the study trained at 256
    augment: bool = True           # random crop/flip/colour jitter on the training split
    dropout: float | None = None   # classifier dropout; None keeps the torchvision default
    freeze_backbone: bool = False  # train only the classifier head; frozen BatchNorm stays in eval
    pretrained: str | None = None  # None (random init) | "imagenet" | path to a state-dict file
    amp: bool | None = None        # mixed precision + gradient scaling; None = on for CUDA only
    sync_bn: bool = False          # SyncBatchNorm across DDP processes (CUDA only in torch)
    precise_bn: int = 512          # training images (no augmentation) that recompute BatchNorm
                                   # statistics before each validation; 0 = keep the running ones
    seed: int = 0                  # one seed for init, data order, augmentation and dropout
    device: str = "auto"           # auto (CUDA if present) | cpu | cuda
    workers: int = 2               # DataLoader worker processes per training process; 0 = inline
    val_split: str = "val"         # split used to select the best epoch
    top_losses: int = 50           # rows in top_losses.csv (hardest training images); 0 = skip
    experiments: str = "artifacts/experiments.csv"  # one row appended per finished run
    dist_timeout_s: int = 1800     # collective timeout: a dead/hung rank ends the job, no hang

    def validate(self) -> "TrainConfig":
        if self.epochs < 1:
            raise UsageError(f"--epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise UsageError(f"--lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise UsageError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.scheduler not in SCHEDULERS:
            raise UsageError(f"--scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        if self.device not in DEVICES:
            raise UsageError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.img_size < 16:
            raise UsageError(f"--img-size must be >= 16 px, got {self.img_size}")
        if self.workers < 0:
            raise UsageError(f"--workers must be >= 0, got {self.workers}")
        if self.precise_bn < 0:
            raise UsageError(f"--precise-bn must be >= 0, got {self.precise_bn}")
        if self.top_losses < 0:
            raise UsageError(f"--top-losses must be >= 0, got {self.top_losses}")
        if self.dist_timeout_s < 1:
            raise UsageError(f"--dist-timeout must be >= 1 s, got {self.dist_timeout_s}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def resume_config(run_dir: str | Path, **given: Any) -> TrainConfig:
    """The config of the run in `run_dir` (from last.pt), with runtime-only options replaced.

    `given` holds the options the user passed explicitly. A weight-shaping option that differs
    from the stored run is rejected rather than silently applied or ignored.
    """

    last = Path(run_dir) / "last.pt"
    if not last.exists():
        raise InputError(f"{run_dir}: nothing to resume (no last.pt; the run never finished an epoch)")
    stored = read_checkpoint(last)["card"].get("config") or {}
    cfg = TrainConfig.from_dict(stored)
    for key, value in given.items():
        if value is None or key == "out":
            continue
        if key == "data" and Path(value).resolve() == Path(stored.get("data", "")).resolve():
            continue
        if key in RUNTIME_FIELDS:
            setattr(cfg, key, value)
        elif key in stored and _differs(stored[key], value):
            raise UsageError(f"--resume continues {run_dir} unchanged; it was trained with "
                             f"{key}={stored[key]!r}, not {value!r} (drop that option or start a new --out)")
    cfg.out = str(run_dir)
    return cfg.validate()


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) != float(b)
    return json.dumps(a) != json.dumps(b)
