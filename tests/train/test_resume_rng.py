"""Resume restores the global RNG streams (python `random`, numpy, torch) that last.pt saved.

Where the restore matters: `fit` reseeds every stream at the start of every epoch
(`seed_everything(epoch_seed(...))`) right after `load_train_state`, and nothing draws in between,
so no training step ever depends on the restored state: "2 epochs in one go" and "1 epoch, then
--resume for the 2nd" end with the same weights and the same global RNG state whether or not the
restore happens (checked by hand: skipping `set_rng_state` in `load_train_state` keeps both
equal). The restored state is only observable (a) right after `load_train_state`, and (b) by code
drawing outside the epochs, e.g. the caller of `fit` after resuming a run that has no epoch
left to train. Both are tested here.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from fopt.checkpoint import read_checkpoint


def _reference_generators(saved: dict):
    """Independent generators set to the saved states with the libraries' own APIs."""
    version, internal, gauss = saved["python"]
    py = random.Random()
    py.setstate((version, tuple(internal), gauss))
    n = saved["numpy"]
    nprs = np.random.RandomState()
    nprs.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    tg = torch.Generator()
    tg.set_state(saved["torch"])
    return py, nprs, tg


def _draw_global(k: int = 8):
    return ([random.random() for _ in range(k)], np.random.random_sample(k).tolist(),
            torch.rand(k).tolist())


def _draw_reference(saved: dict, k: int = 8):
    py, nprs, tg = _reference_generators(saved)
    return [py.random() for _ in range(k)], nprs.random_sample(k).tolist(), torch.rand(k, generator=tg).tolist()


def _scramble(seed: int = 12345) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def test_load_train_state_restores_the_saved_global_rng_streams(trained_run):
    from fopt.data.datasets import DatasetTable
    from fopt.train.distributed import DistInfo
    from fopt.train.engine import (
        build_model,
        build_optimizer,
        build_scheduler,
        load_train_state,
    )

    cfg, result = trained_run
    saved = read_checkpoint(result.run_dir / "last.pt")["train_state"]["rng"]
    model, _ = build_model(cfg, len(DatasetTable.load(cfg.data).class_names))
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    scaler = torch.amp.GradScaler("cpu", enabled=False)

    _scramble()
    # The test means something only if the state before the load is not already the saved one.
    assert _draw_global() != _draw_reference(saved)
    _scramble()
    logs: list[str] = []
    _, start_epoch, *_ = load_train_state(result.run_dir, model, optimizer, scheduler, scaler,
                                          DistInfo(), logs.append)
    assert start_epoch == 4
    py_state = random.getstate()
    assert py_state[0] == saved["python"][0] and list(py_state[1]) == list(saved["python"][1])
    np_state = np.random.get_state()
    assert np.array_equal(np_state[1], saved["numpy"]["keys"].numpy().astype(np.uint32))
    assert np_state[2] == saved["numpy"]["pos"]
    assert torch.equal(torch.get_rng_state(), saved["torch"])
    # ... and every stream draws what a generator set to the saved state draws.
    assert _draw_global() == _draw_reference(saved)


def test_resuming_a_finished_run_continues_the_rng_streams_of_the_uninterrupted_one(synth_dataset, tmp_path):
    """After `fit` returns, code that draws from the global streams sees the same numbers whether
    the run finished in one go or was resumed (here: resumed with no epoch left, so the restored
    state is what the caller inherits, after the same final evaluation)."""
    from fopt.train.config import TrainConfig
    from fopt.train.engine import fit

    cfg = TrainConfig(data=str(synth_dataset), model="tiny", out=str(tmp_path / "run"), epochs=1,
                      batch_size=8, img_size=32, workers=0, top_losses=0, precise_bn=0,
                      experiments=str(tmp_path / "experiments.csv"))
    fit(cfg)
    after_uninterrupted = _draw_global()
    saved = read_checkpoint(tmp_path / "run" / "last.pt")["train_state"]["rng"]

    _scramble()
    fit(cfg, resume=True)
    after_resume = _draw_global()
    assert after_resume == after_uninterrupted
    # python `random` and numpy are not drawn after the last epoch's save: the caller continues
    # exactly the saved streams (torch is: each DataLoader of the final evaluation draws a seed).
    py, nprs, _ = _reference_generators(saved)
    assert after_resume[0] == [py.random() for _ in range(8)]
    assert after_resume[1] == nprs.random_sample(8).tolist()
