"""Precise BN under DDP: every rank must run the same number of batches, because with --sync-bn
each batch is a collective (SyncBatchNorm all-reduces its statistics) and a rank with one batch
more waits in NCCL forever. World sizes that do not divide the image count are the case."""

from __future__ import annotations

import pytest

from fopt.train.distributed import DistInfo, equal_shard


@pytest.mark.parametrize("n, world", [(97, 3), (10, 4), (5, 8), (64, 2), (1, 3)])
def test_equal_shard_gives_every_rank_the_same_count_and_covers_every_item(n, world):
    items = list(range(100, 100 + n))
    shares = [equal_shard(items, r, world) for r in range(world)]
    assert len({len(s) for s in shares}) == 1 and len(shares[0]) == -(-n // world)
    assert set().union(*map(set, shares)) == set(items)
    assert sum(map(len, shares)) - n < world   # at most world - 1 repeats
    assert equal_shard([], 0, world) == []


@pytest.mark.parametrize("images, world, batch", [(97, 3, 32), (33, 2, 32), (70, 4, 8), (5, 3, 32)])
def test_precise_bn_loaders_run_the_same_number_of_batches_on_every_rank(tmp_path, images, world, batch):
    import torch

    from fopt.train.config import TrainConfig
    from fopt.train.engine import build_loaders

    cfg = TrainConfig(data=str(tmp_path), model="tiny", out=str(tmp_path / "run"), batch_size=batch,
                      workers=0, seed=0, precise_bn=images)
    train = list(range(200))
    ds = {"train": train, "train_plain": train, "val": list(range(10)), "test": None}
    loaders = [build_loaders(cfg, ds, DistInfo(rank=r, world_size=world, backend="gloo"), torch.device("cpu"))
               for r in range(world)]
    batches = [len(lo["precise_bn"]) for lo in loaders]
    assert len(set(batches)) == 1, f"ranks would run {batches} precise-BN batches: NCCL hangs"
    seen = set().union(*(set(lo["precise_bn"].sampler) for lo in loaders))
    assert len(seen) == images   # every picked image is still used
