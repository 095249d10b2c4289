"""Training images/s: fopt's train_one_epoch vs a bare PyTorch loop (same model, data, batch).

Both loops draw from the same DataLoader (fopt's, over a synthetic dataset at --img-size) and
train the same registry model with Adam; the rounds alternate fopt/bare so drift on a shared
machine hits both. Prints JSON (and writes it with --out). Numbers from a machine that other
processes share are noisy: compare the ratio, and look at the spread over --repeats.

    .venv/bin/python benchmarks/train_throughput.py --models resnet18 mobilenet_v3_small --img-size 128
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path


def bare_epoch(model, loader, optimizer) -> float:
    import torch.nn.functional as F

    model.train()
    t0 = time.perf_counter()
    n = 0
    for images, labels in loader:
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n += labels.numel()
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v3_small"])
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--images", type=int, default=192, help="training images per epoch")
    ap.add_argument("--repeats", type=int, default=3, help="epochs per loop (alternating)")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import torch

    from fopt.data.build import build_dataset
    from fopt.data.datasets import DatasetTable
    from fopt.data.synth import synthesize
    from fopt.train.config import TrainConfig
    from fopt.train.distributed import DistInfo
    from fopt.train.engine import (
        build_datasets,
        build_input_spec,
        build_loaders,
        build_model,
        build_optimizer,
        seed_everything,
        train_one_epoch,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="fopt_bench_train_"))
    classes = 6
    # the builder splits ~70/15/15: ask for enough images that train has about --images
    synthesize(tmp / "raw", classes=classes, per_class=max(10, int(args.images / 0.7 / classes) + 1),
               size=args.img_size, seed=0)
    build_dataset(tmp / "raw", tmp / "ds")
    table = DatasetTable.load(tmp / "ds")
    device = torch.device("cpu")
    results = []
    for name in args.models:
        cfg = TrainConfig(data=str(tmp / "ds"), model=name, out=str(tmp / "run"),
                          batch_size=args.batch_size, img_size=args.img_size, workers=args.workers,
                          augment=True)
        spec = build_input_spec(cfg)
        loaders = build_loaders(cfg, build_datasets(cfg, spec, table), DistInfo(), device)
        seed_everything(0)
        model = build_model(cfg, classes)[0]
        optimizer = build_optimizer(cfg, model)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        bare_epoch(model, loaders["train"], optimizer)  # warm-up (allocator, oneDNN kernels)
        fopt_ips, bare_ips = [], []
        for _ in range(args.repeats):
            r = train_one_epoch(model, loaders["train"], optimizer, scaler, device, amp=False,
                                dist=DistInfo(), show_progress=True)
            fopt_ips.append(r["images_per_s"])
            bare_ips.append(bare_epoch(model, loaders["train"], optimizer))
        f, b = statistics.median(fopt_ips), statistics.median(bare_ips)
        results.append({"model": name, "img_size": args.img_size, "batch_size": args.batch_size,
                        "images_per_epoch": len(loaders["train"]) * args.batch_size,
                        "fopt_images_per_s": round(f, 2), "bare_images_per_s": round(b, 2),
                        "fopt_over_bare": round(f / b, 3),
                        "fopt_runs": [round(x, 2) for x in fopt_ips],
                        "bare_runs": [round(x, 2) for x in bare_ips]})
        print(json.dumps(results[-1]), flush=True)
    out = {"benchmark": "train_throughput", "device": "cpu", "threads": torch.get_num_threads(),
           "workers": args.workers, "torch": torch.__version__, "cpu": platform.processor() or
           platform.machine(), "results": results}
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
