"""Images/s of the data loader alone (decode + train transform + collate) on the synthetic data.

Decoding must not be the training bottleneck. This builds the synthetic dataset (cached under
--work), then times one pass over the train split through a torch DataLoader for each image
size x transform size x worker count, and prints JSON.

Example: python benchmarks/data_loader.py --work artifacts/bench/data --json artifacts/bench/data_loader.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path


def measure(dataset_dir: Path, img_size: int, workers: int, batch_size: int, repeats: int) -> dict:
    import torch

    from fopt.data.datasets import ImageTableDataset
    from fopt.data.transforms import build_transform

    ds = ImageTableDataset(dataset_dir, "train", build_transform(img_size, train=True))
    runs = []
    for _ in range(repeats):
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                                             drop_last=False)
        t0 = time.perf_counter()
        first = None
        n = n_after_first = 0
        for x, _ in loader:
            n += len(x)
            if first is None:
                first = time.perf_counter()   # excludes worker start-up from the steady rate
            else:
                n_after_first += len(x)
        t1 = time.perf_counter()
        runs.append({"images": n, "total_s": t1 - t0,
                     "images_per_s": n / (t1 - t0),
                     "steady_images_per_s": n_after_first / (t1 - first) if n_after_first else None})
    best = max(runs, key=lambda r: r["images_per_s"])
    return {"transform_px": img_size, "workers": workers, "batch_size": batch_size,
            "images": best["images"], "images_per_s": round(best["images_per_s"], 1),
            "steady_images_per_s": round(best["steady_images_per_s"] or 0, 1),
            "all_runs_images_per_s": [round(r["images_per_s"], 1) for r in runs]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="artifacts/bench/data", help="where the synthetic sets are cached")
    ap.add_argument("--json", dest="json_path", help="also write the result here")
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--image-sizes", default="64,128", help="synthetic image sides (px) to generate")
    ap.add_argument("--transform-sizes", default="64,128", help="train-transform output sides (px)")
    ap.add_argument("--workers", default="0,2")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    import torch

    from fopt.data.build import build_dataset
    from fopt.data.synth import synthesize

    torch.set_num_threads(1)  # the loader's cost per core, as in a training process
    work = Path(args.work)
    rows = []
    for image_px in [int(s) for s in args.image_sizes.split(",")]:
        raw = synthesize(work / f"synth{image_px}" / "raw", per_class=args.per_class, size=image_px)
        table = work / f"synth{image_px}" / "table"
        build_dataset(raw, table, force=True)  # this benchmark's own work folder, rebuilt each run
        for tf_px in [int(s) for s in args.transform_sizes.split(",")]:
            for workers in [int(w) for w in args.workers.split(",")]:
                r = measure(table, tf_px, workers, args.batch_size, args.repeats)
                rows.append({"image_px": image_px, **r})
                print(json.dumps(rows[-1]), flush=True)
    result = {"benchmark": "data_loader", "split": "train", "transform": "train preset (random resized crop, "
              "flip, colour jitter, normalise)", "cpu_count": os.cpu_count(), "machine": platform.processor()
              or platform.machine(), "torch_threads": 1, "rows": rows}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_path:
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_path).write_text(text + "\n")


if __name__ == "__main__":
    main()
