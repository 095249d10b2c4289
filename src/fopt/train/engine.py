"""The training loop: ``build_*`` functions, ``train_one_epoch``, ``evaluate`` and ``fit``.

One process or many (torchrun + DDP, see ``distributed.py``): the same code path, with the
sampler, gradient averaging and metric gathering switched on by the world size.

Reproducibility: every epoch starts from seeds derived from (seed, epoch, rank), and the data
order comes from ``DistributedSampler(seed).set_epoch(epoch)``. An epoch is therefore a pure
function of the weights and optimizer state it starts from, which is exactly what ``last.pt``
stores, so on CPU a run resumed after a kill ends with the same weights as one never interrupted.
(RNG states are saved and restored too, for inspection and for code that draws outside epochs.)
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fopt import models
from fopt.artifacts import (
    InputSpec,
    sweep_stale_temps,
    write_json_atomic,
    write_text_atomic,
)
from fopt.checkpoint import read_checkpoint, save_checkpoint
from fopt.console import NoBar, epoch_bar, err_console
from fopt.data.datasets import DatasetTable, ImageTableDataset
from fopt.data.transforms import DEFAULT_MEAN, DEFAULT_STD, build_transform
from fopt.errors import (
    CheckpointError,
    DataError,
    FoptError,
    OutputExistsError,
    UsageError,
    first_line,
)
from fopt.evaluation import classification_metrics, classification_report_text
from fopt.models import IMAGENET_MEAN, IMAGENET_STD, count_params, frozen_norm_eval
from fopt.runtime import resolve_device
from fopt.train import metrics as M
from fopt.train.config import TrainConfig
from fopt.train.distributed import (
    DistInfo,
    all_reduce_sum,
    broadcast_buffers,
    cleanup,
    equal_shard,
    gather_arrays,
    init_from_env,
)
from fopt.workdir import exclusive


@dataclass
class FitResult:
    run_dir: Path
    best_epoch: int
    val: dict[str, Any]                 # metrics of best.pt on the validation split
    test: dict[str, Any] | None         # same on the test split, when the dataset has one
    history: list[dict[str, Any]]
    files: dict[str, Path] = field(default_factory=dict)
    world_size: int = 1
    is_main: bool = True                # False on torchrun ranks other than 0 (they write nothing)


# ----------------------------------------------------------------------------- output

def note(message: str) -> None:
    """One unwrapped log line on stderr (greppable, whatever the terminal width)."""
    err_console.print(message, markup=False, highlight=False, soft_wrap=True)


def unwrap_worker_error(e: BaseException) -> BaseException:
    """The original one-line error of a DataLoader worker, else `e` itself.

    A worker's exception reaches the main process re-created from one string, "Caught DataError
    in DataLoader worker process 0. Original Traceback ...": the whole traceback as its message.
    For fopt's own errors the user needs the last line only, the message the worker raised."""
    msg = str(e)
    if not isinstance(e, FoptError) or not msg.startswith("Caught ") or "DataLoader worker" not in msg:
        return e
    cls = type(e)
    prefixes = (f"{cls.__module__}.{cls.__qualname__}: ", f"{cls.__qualname__}: ")
    for line in reversed(msg.splitlines()):
        for prefix in prefixes:
            if line.startswith(prefix) and line[len(prefix):].strip():
                return cls(line[len(prefix):].strip())
    return e


# ----------------------------------------------------------------------------- seeds, devices

def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    # Distinct, reproducible streams per (run seed, epoch, rank); ranks augment differently.
    return (seed * 1_000_003 + epoch * 7_919 + rank * 104_729) % 2**62


def rng_state() -> dict[str, Any]:
    import torch

    np_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)),
                       "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                       "gauss": float(np_state[4])}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resolve_train_device(cfg: TrainConfig, dist: DistInfo | None = None):
    import torch


    kind = resolve_device(cfg.device)
    if kind == "cuda" and dist is not None and dist.enabled:
        return torch.device("cuda", dist.local_rank)
    return torch.device(kind)


# ----------------------------------------------------------------------------- builders

def build_input_spec(cfg: TrainConfig) -> InputSpec:
    if cfg.pretrained == "imagenet":  # the weights were learned on ImageNet-normalised inputs
        return InputSpec(size=cfg.img_size, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return InputSpec(size=cfg.img_size, mean=tuple(DEFAULT_MEAN), std=tuple(DEFAULT_STD))


def build_model(cfg: TrainConfig, num_classes: int):
    """The registry model with pretrained weights and freezing applied; returns (model, kwargs)."""
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if cfg.dropout is not None:
        kwargs["dropout"] = cfg.dropout
    model = models.build_model(cfg.model, **kwargs)
    if cfg.pretrained:
        models.load_pretrained(model, cfg.model, cfg.pretrained)
    if cfg.freeze_backbone:
        models.freeze_backbone(model)
    return model, kwargs


def build_datasets(cfg: TrainConfig, spec: InputSpec, table) -> dict[str, Any]:
    """train (training transform), train_plain (train split, eval transform: it feeds
    top_losses.csv, the hardest training images judged without augmentation), val, test|None."""

    eval_tf = build_transform(spec.size, spec.mean, spec.std, train=False)
    train_tf = build_transform(spec.size, spec.mean, spec.std, train=True) if cfg.augment else eval_tf
    def split(name, tf, draft=None):
        return ImageTableDataset(table, name, tf, draft_size=draft)

    has_test = cfg.val_split != "test" and len(table.split("test")) > 0
    # JPEG draft decoding skips detail the random crop discards anyway (faster epochs); evaluation
    # decodes in full, exactly as `fopt eval` does, so report.json and `fopt eval` agree.
    ds = {"train": split("train", train_tf, draft=spec.size), "train_plain": split("train", eval_tf),
          "val": split(cfg.val_split, eval_tf), "test": split("test", eval_tf) if has_test else None}
    for name, split in (("train", "train"), ("val", cfg.val_split)):
        if len(ds[name]) == 0:
            raise DataError(f"{cfg.data}: the {split!r} split is empty")
    return ds


class ShardSampler:
    """Every `world`-th index starting at `rank`, no padding: ranks together see each sample
    exactly once (DistributedSampler pads with repeats, which would bias validation metrics)."""

    def __init__(self, n: int, rank: int = 0, world: int = 1):
        self.indices = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def build_loaders(cfg: TrainConfig, ds: dict[str, Any], dist: DistInfo, device) -> dict[str, Any]:
    """The training loader and one evaluation loader per other dataset (None stays None)."""
    from torch.utils.data import DataLoader, DistributedSampler

    # The same sampler for 1 or N processes: its permutation depends only on (seed, epoch), and
    # rank r takes positions r, r+N, ...: the union of the ranks' k-th batches is the k-th batch
    # of a single process with N times the batch, so DDP and one process see the same data.
    sampler = DistributedSampler(ds["train"], num_replicas=dist.world_size, rank=dist.rank,
                                 shuffle=True, seed=cfg.seed)
    common = {"num_workers": cfg.workers, "pin_memory": device.type == "cuda",
              # fresh workers each epoch: their seeds then follow the per-epoch reseed (resumable)
              "persistent_workers": False}
    loaders: dict[str, Any] = {"train": DataLoader(
        ds["train"], batch_size=cfg.batch_size, sampler=sampler,
        # a ragged last batch would make BatchNorm statistics noisy
        drop_last=len(sampler) >= cfg.batch_size, **common)}
    for name, split in ds.items():
        if name != "train":
            loaders[name] = None if split is None else DataLoader(
                split, batch_size=max(cfg.batch_size, 64),
                sampler=ShardSampler(len(split), dist.rank, dist.world_size), **common)
    loaders["precise_bn"] = None
    if cfg.precise_bn:
        # A fixed random subset (split files are often grouped by class), drawn from its own
        # generator so the training data order and augmentation stay what they were.
        n = len(ds["train_plain"])
        pick = np.random.default_rng(cfg.seed).permutation(n)[:min(cfg.precise_bn, n)].tolist()
        # Equal shares: with --sync-bn every precise-BN batch is a collective, so every rank must
        # run the same number of batches (equal_shard).
        loaders["precise_bn"] = DataLoader(ds["train_plain"], batch_size=max(cfg.batch_size, 32),
                                           sampler=equal_shard(pick, dist.rank, dist.world_size), **common)
    return loaders


def recompute_bn_stats(model, loader, device, *, amp: bool = False) -> int:
    """Replace the running statistics of every BatchNorm in training mode by their plain average
    over `loader` (precise BN); returns how many layers were recomputed.

    Running averages trail the weights: torchvision's MobileNetV3 uses momentum 0.01, so after a
    few epochs from scratch its running statistics still describe much earlier weights (measured:
    mobilenet_v3_large, 5 epochs, validation accuracy 12.7% with them, 77.0% after recomputing on
    512 training images). Frozen BatchNorm (eval mode, `fopt.models.frozen_norm_eval`) is left alone.
    """
    import torch
    from torch.nn.modules.batchnorm import _BatchNorm

    layers = [m for m in model.modules()
              if isinstance(m, _BatchNorm) and m.training and m.track_running_stats]
    if not layers:
        return 0
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    try:
        with torch.no_grad():
            for images, _labels in loader:
                with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                    model(images.to(device, non_blocking=True))
    finally:
        for m, mom in zip(layers, momenta):
            m.momentum = mom
    return len(layers)


def build_optimizer(cfg: TrainConfig, model):
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)


def build_scheduler(cfg: TrainConfig, optimizer):
    """Stepped once per epoch (plateau with the validation macro-F1)."""
    from torch.optim import lr_scheduler as S

    if cfg.scheduler == "cosine":
        return S.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    if cfg.scheduler == "step":
        return S.StepLR(optimizer, step_size=max(1, cfg.epochs // 3), gamma=0.1)
    if cfg.scheduler == "plateau":
        return S.ReduceLROnPlateau(optimizer, mode="max", factor=0.1, patience=2)
    return None


# ----------------------------------------------------------------------------- one epoch

def train_one_epoch(model, loader, optimizer, scaler, device, *, amp: bool, dist: DistInfo,
                    description: str = "train", show_progress: bool = True) -> dict[str, float]:
    """One pass over `loader`; returns loss, acc, images, seconds, images_per_s (over all ranks)."""
    import torch
    import torch.nn.functional as F


    model.train()
    frozen_norm_eval(model)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    t0 = last_refresh = time.perf_counter()
    with epoch_bar(show_progress) as bar:
        task = bar.add_task(description, total=len(loader), info="")
        for images, labels in loader:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                logits = model(images)
                loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            # Accumulate on the device; reading values back every step would stall a GPU.
            loss_sum += loss.detach().double() * labels.numel()
            correct += (logits.detach().argmax(1) == labels).sum()
            seen += labels.numel()
            bar.advance(task)
            now = time.perf_counter()
            if show_progress and now - last_refresh > 0.5 and not isinstance(bar, NoBar):
                last_refresh = now
                bar.update(task, info=f"loss {loss_sum.item() / seen:.4f}  acc {correct.item() / seen:.3f}"
                                      f"  {seen * dist.world_size / (now - t0):.0f} img/s")
    seconds = time.perf_counter() - t0
    total_loss, total_correct, total_seen = all_reduce_sum(
        [loss_sum.item(), float(correct.item()), float(seen)], dist, device)
    total_seen = max(total_seen, 1.0)
    return {"loss": total_loss / total_seen, "acc": total_correct / total_seen,
            "images": int(total_seen), "seconds": seconds, "images_per_s": total_seen / seconds}


def evaluate(model, loader, device, *, amp: bool, dist: DistInfo) -> dict[str, np.ndarray]:
    """Per-sample index, label, prediction and loss over the *whole* split (gathered from ranks)."""
    import torch
    import torch.nn.functional as F

    model.eval()
    indices = np.asarray(list(loader.sampler), dtype=np.int64)
    labels_out, preds_out, losses_out = [], [], []
    with torch.no_grad():
        for images, labels in loader:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                logits = model(images)
            losses = F.cross_entropy(logits.float(), labels, reduction="none")
            labels_out.append(labels.cpu().numpy())
            preds_out.append(logits.argmax(1).cpu().numpy())
            losses_out.append(losses.cpu().numpy())
    local = {"index": indices,
             "label": np.concatenate(labels_out) if labels_out else np.zeros(0, np.int64),
             "pred": np.concatenate(preds_out) if preds_out else np.zeros(0, np.int64),
             "loss": np.concatenate(losses_out) if losses_out else np.zeros(0, np.float32)}
    return gather_arrays(local, dist)


# ----------------------------------------------------------------------------- fit

def _describe(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")
    return f"{len(names)} classes ({shown})"


def check_resume_matches(ckpt: Path, card: dict[str, Any], data: str, class_names: list[str],
                         spec: InputSpec) -> None:
    """A resume continues the same problem: the checkpoint's classes and input spec must be the
    dataset's and the config's now, else one line saying what differs (before any weight loads)."""
    hint = "start a new run (another --out, or --force to start over here)"
    saved = list(card.get("class_names") or [])
    if saved != list(class_names):
        if len(saved) != len(class_names):
            what = f"{_describe(saved)}, the dataset now has {_describe(list(class_names))}"
        elif sorted(saved) == sorted(class_names):
            what = "the same classes in another label order"
        else:
            diff = [f"{a!r} -> {b!r}" for a, b in zip(saved, class_names) if a != b]
            what = f"other class names ({', '.join(diff[:3])}{', ...' if len(diff) > 3 else ''})"
        raise CheckpointError(f"cannot resume {ckpt}: it was trained on {what} in {data} "
                              f"(the dataset was rebuilt?); {hint}")
    try:
        old = InputSpec.from_dict(card.get("input_spec") or {})
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"cannot resume {ckpt}: its card has no readable input spec") from None
    diffs = [f"{k} {getattr(old, k)} vs {getattr(spec, k)} now" for k in ("size", "channels", "mean", "std")
             if tuple(np.atleast_1d(getattr(old, k))) != tuple(np.atleast_1d(getattr(spec, k)))]
    if diffs:
        raise CheckpointError(f"cannot resume {ckpt}: its input spec differs ({'; '.join(diffs)}); {hint}")


def load_train_state(run_dir: Path, model, optimizer, scheduler, scaler, dist: DistInfo, log,
                     expect: tuple[str, list[str], InputSpec] | None = None):
    """Restore everything last.pt holds; returns (history, start_epoch, best_f1, best_epoch,
    best_state). `expect` = (data, class names, input spec) the checkpoint must match. Every rank
    reads the files, so multi-node resume needs RUN_DIR on shared storage."""

    if dist.is_main:  # temporaries of writes a kill interrupted; a live writer's are kept
        sweep_stale_temps(run_dir)
    raw = read_checkpoint(run_dir / "last.pt")
    ts = raw.get("train_state")
    if not ts:
        raise DataError(f"{run_dir / 'last.pt'}: has no training state to resume from")
    if expect is not None:
        check_resume_matches(run_dir / "last.pt", raw.get("card") or {}, *expect)
    model.load_state_dict(raw["state_dict"])
    optimizer.load_state_dict(ts["optimizer"])
    if scheduler is not None and ts.get("scheduler"):
        scheduler.load_state_dict(ts["scheduler"])
    if ts.get("scaler"):
        scaler.load_state_dict(ts["scaler"])
    set_rng_state(ts["rng"])
    best_state = None
    if ts["best_epoch"] and (run_dir / "best.pt").exists():
        best_state = read_checkpoint(run_dir / "best.pt")["state_dict"]
    stored_world = (raw["card"].get("config") or {}).get("world_size", 1)
    if stored_world != dist.world_size:
        log(f"warning: resuming a {stored_world}-process run with {dist.world_size} process(es): "
            f"the global batch changes from here on")
    log(f"resuming {run_dir} after epoch {ts['epoch']} (best so far: epoch {ts['best_epoch']}, "
        f"macro-F1 {ts['best_f1']:.4f})")
    return list(ts["history"]), ts["epoch"] + 1, ts["best_f1"], ts["best_epoch"], best_state


def fit(cfg: TrainConfig, resume: bool = False, force: bool = False) -> FitResult:
    """Train `cfg.model` on `cfg.data` into `cfg.out`; with `resume`, continue from last.pt there.

    A run folder that already holds a run is refused unless `force` (start over) or `resume`.
    Under torchrun every process calls this; only rank 0 writes files.
    """
    import torch

    cfg.validate()
    device_kind = resolve_train_device(cfg).type  # --device cuda without a GPU fails here, early
    dist = init_from_env(device_kind, cfg.dist_timeout_s)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        if device_kind == "cpu":  # restored below: fit may run inside a larger program
            torch.use_deterministic_algorithms(True, warn_only=True)
        if not dist.is_main:  # only rank 0 writes, so only rank 0 holds the run folder's lock
            return _fit_plain_errors(cfg, resume, force, dist)
        with exclusive(cfg.out, what=f"run folder {cfg.out}", folder=True):
            return _fit_plain_errors(cfg, resume, force, dist)
    except BaseException as e:
        if dist.enabled:  # name the rank: torchrun's summary otherwise only shows exit codes
            first = first_line(e, "")
            hint = (f" (no answer from another rank within --dist-timeout {cfg.dist_timeout_s} s: "
                    f"it died or hung; its own log says why)" if "timed out" in first.lower() else "")
            note(f"rank {dist.rank}/{dist.world_size} failed: {type(e).__name__}: {first}{hint}")
        raise
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        cleanup(dist)


def _fit_plain_errors(cfg: TrainConfig, resume: bool, force: bool, dist: DistInfo) -> FitResult:
    """`_fit`, with a DataLoader worker's error turned back into its own one-line message."""
    try:
        return _fit(cfg, resume, force, dist)
    except FoptError as e:
        plain = unwrap_worker_error(e)
        if plain is e:
            raise
        raise plain from None


def _fit(cfg: TrainConfig, resume: bool, force: bool, dist: DistInfo) -> FitResult:
    import torch


    device = resolve_train_device(cfg, dist)
    amp = (device.type == "cuda") if cfg.amp is None else cfg.amp
    if amp and device.type != "cuda":
        raise UsageError("--amp needs CUDA (fp16 autocast with gradient scaling); pass --no-amp "
                         "or --device cuda")
    if cfg.sync_bn and dist.enabled and device.type != "cuda":
        raise UsageError("--sync-bn needs CUDA: torch's SyncBatchNorm does not run on CPU "
                         "(drop --sync-bn; BatchNorm statistics are then per process)")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest
    cfg.data = str(Path(cfg.data).resolve())
    run_dir = Path(cfg.out)
    main = dist.is_main
    log = note if main else (lambda _msg: None)
    if not resume and not force and (run_dir / "last.pt").exists():
        raise OutputExistsError(f"{run_dir} already holds a run (last.pt): pass --resume {run_dir} "
                                f"to continue it, --force to start over, or another --out")

    table = DatasetTable.load(cfg.data)
    class_names = list(table.class_names)
    spec = build_input_spec(cfg)
    ds = build_datasets(cfg, spec, table)

    seed_everything(cfg.seed)  # identical initial weights on every rank
    model, model_kwargs = build_model(cfg, len(class_names))
    params = count_params(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if dist.enabled and cfg.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    net = model  # what training calls; evaluation always uses the bare `model`
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    loaders = build_loaders(cfg, ds, dist, device)

    history: list[dict[str, Any]] = []
    start_epoch, best_f1, best_epoch, best_state = 1, -1.0, 0, None
    if resume:
        history, start_epoch, best_f1, best_epoch, best_state = load_train_state(
            run_dir, model, optimizer, scheduler, scaler, dist, log,
            expect=(cfg.data, class_names, spec))
    if cfg.freeze_backbone and not cfg.pretrained:
        log("warning: --freeze-backbone without --pretrained trains a head on random features")

    world_cfg = {**cfg.to_dict(), "world_size": dist.world_size,
                 "global_batch_size": cfg.batch_size * dist.world_size}
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / "config.json", world_cfg)
    log(f"{cfg.model}: {params:,} params ({trainable:,} trainable), {len(class_names)} classes, "
        f"{len(ds['train'])} train / {len(ds['val'])} {cfg.val_split} images at {spec.size} px on "
        f"{device}{' with AMP' if amp else ''}")
    log(f"batch {cfg.batch_size} per process x {dist.world_size} process(es) = global batch "
        f"{cfg.batch_size * dist.world_size}; {len(loaders['train'])} steps per epoch")

    ckpt_common = {"model_name": cfg.model, "model_kwargs": model_kwargs, "class_names": class_names,
                   "input_spec": spec, "config": world_cfg}
    for epoch in range(start_epoch, cfg.epochs + 1):
        t0 = time.perf_counter()
        seed_everything(epoch_seed(cfg.seed, epoch, dist.rank))
        loaders["train"].sampler.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        tr = train_one_epoch(net, loaders["train"], optimizer, scaler, device, amp=amp, dist=dist,
                             description=f"epoch {epoch}/{cfg.epochs}", show_progress=main)
        if loaders.get("precise_bn") is not None:
            recompute_bn_stats(model, loaders["precise_bn"], device, amp=amp)
        broadcast_buffers(model, dist)  # rank 0's statistics (its share of the precise-BN images)
        ev = evaluate(model, loaders["val"], device, amp=amp, dist=dist)
        m = classification_metrics(ev["label"], ev["pred"], class_names)
        val_loss = float(ev["loss"].mean())
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(m["macro_f1"])
        elif scheduler is not None:
            scheduler.step()
        row = {"epoch": epoch, "train_loss": tr["loss"], "train_acc": tr["acc"], "val_loss": val_loss,
               "val_acc": m["accuracy"], "val_macro_f1": m["macro_f1"], "lr": lr,
               "seconds": round(time.perf_counter() - t0, 3), "images_per_s": round(tr["images_per_s"], 1)}
        history.append(row)
        improved = m["macro_f1"] > best_f1  # identical on every rank: metrics are gathered
        if improved:
            best_f1, best_epoch = m["macro_f1"], epoch
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        if main:
            M.write_rows_csv(run_dir / "history.csv", history)
            if improved:
                save_checkpoint(run_dir / "best.pt", model, **ckpt_common, metrics={
                    "split": cfg.val_split, "epoch": epoch, "accuracy": m["accuracy"],
                    "macro_f1": m["macro_f1"], "loss": val_loss, "n": m["n"]})
            # last.pt last: once it exists, everything it implies (history, best.pt) is on disk.
            save_checkpoint(run_dir / "last.pt", model, **ckpt_common, metrics={"epoch": epoch},
                            train_state={
                                "epoch": epoch, "optimizer": optimizer.state_dict(),
                                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                                "scaler": scaler.state_dict(), "rng": rng_state(), "history": history,
                                "best_f1": best_f1, "best_epoch": best_epoch})
        log(f"epoch {epoch}/{cfg.epochs}  train loss {tr['loss']:.4f} acc {tr['acc']:.3f} | "
            f"{cfg.val_split} loss {val_loss:.4f} acc {m['accuracy']:.3f} macro-F1 {m['macro_f1']:.3f} | "
            f"lr {lr:.2e} | {row['seconds']:.1f} s, {tr['images_per_s']:.0f} img/s"
            f"{'  *best' if improved else ''}")

    if best_state is not None:  # the reports describe best.pt, evaluated across all ranks
        model.load_state_dict(best_state)
    final = {name: evaluate(model, loaders[name], device, amp=amp, dist=dist)
             for name in ("val", "test") if loaders[name] is not None}
    if cfg.top_losses:
        final["train_plain"] = evaluate(model, loaders["train_plain"], device, amp=amp, dist=dist)
    scores = {name: classification_metrics(final[name]["label"], final[name]["pred"], class_names)
              for name in ("val", "test") if name in final}
    files = {name: run_dir / name for name in
             ("best.pt", "last.pt", "history.csv", "curves.png", "report.json",
              "classification_report.txt", "confusion_matrix.png", "top_losses.csv", "config.json")}
    if main:
        _write_reports(cfg, files, history, final, scores, class_names, ds["train_plain"].paths,
                       best_epoch=best_epoch, params=params, trainable=trainable, dist=dist,
                       device=device.type, amp=amp)
    return FitResult(run_dir, best_epoch, scores["val"], scores.get("test"), history, files,
                     world_size=dist.world_size, is_main=main)


def _write_reports(cfg: TrainConfig, files: dict[str, Path], history, final, scores, class_names,
                   train_paths, *, best_epoch: int, params: int, trainable: int, dist: DistInfo,
                   device: str, amp: bool) -> None:
    val_m, test_m = scores["val"], scores.get("test")
    write_json_atomic(files["report.json"], {
        "model": cfg.model, "run_dir": str(Path(cfg.out).resolve()), "best_epoch": best_epoch,
        "params": params, "trainable_params": trainable, "world_size": dist.world_size,
        "class_names": class_names, "val_split": cfg.val_split, "val": val_m, "test": test_m})
    text = f"{cfg.model}, best epoch {best_epoch}, split {cfg.val_split}\n\n" + \
        classification_report_text(final["val"]["label"], final["val"]["pred"], class_names)
    if test_m is not None:
        text += "\nsplit test\n\n" + classification_report_text(final["test"]["label"],
                                                                   final["test"]["pred"], class_names)
    write_text_atomic(files["classification_report.txt"], text)
    M.plot_confusion_matrix(val_m["confusion_matrix"], class_names, files["confusion_matrix.png"],
                            title=f"{cfg.model} {cfg.val_split} (best epoch {best_epoch})")
    M.plot_curves(history, files["curves.png"])
    rows = []
    if "train_plain" in final:
        h = final["train_plain"]
        rows = M.top_losses([str(train_paths[i]) for i in h["index"]], h["label"], h["pred"],
                            h["loss"], class_names, cfg.top_losses)
    M.write_rows_csv(files["top_losses.csv"], rows, ["path", "true", "predicted", "loss"])
    M.append_row_csv(cfg.experiments, {
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "run_dir": str(Path(cfg.out).resolve()),
        "model": cfg.model, "data": cfg.data, "epochs": cfg.epochs, "batch_size": cfg.batch_size,
        "global_batch_size": cfg.batch_size * dist.world_size, "lr": cfg.lr,
        "optimizer": cfg.optimizer, "weight_decay": cfg.weight_decay, "scheduler": cfg.scheduler,
        "img_size": cfg.img_size, "augment": cfg.augment, "dropout": cfg.dropout,
        "freeze_backbone": cfg.freeze_backbone, "pretrained": cfg.pretrained or "", "amp": amp,
        "seed": cfg.seed, "device": device, "world_size": dist.world_size, "params": params,
        "trainable_params": trainable, "best_epoch": best_epoch,
        "val_accuracy": round(val_m["accuracy"], 6), "val_macro_f1": round(val_m["macro_f1"], 6),
        "test_accuracy": round(test_m["accuracy"], 6) if test_m else "",
        "test_macro_f1": round(test_m["macro_f1"], 6) if test_m else "",
        "train_seconds": round(sum(h["seconds"] for h in history), 2)})
