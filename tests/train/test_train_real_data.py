"""Smoke test on real DeepFashion photos (../shared/data), skipped when they are absent."""

from __future__ import annotations

import json


def test_one_epoch_on_deepfashion_inshop_minibatch(shared_data, tmp_path):
    from fopt.data.build import build_dataset
    from fopt.evaluation import evaluate_artifact
    from fopt.train.config import TrainConfig
    from fopt.train.engine import fit

    raw = shared_data / "deepfashion" / "inshop_minibatch"
    build_dataset(raw, tmp_path / "ds")
    cfg = TrainConfig(data=str(tmp_path / "ds"), model="tiny", out=str(tmp_path / "run"), epochs=1,
                      batch_size=16, img_size=32, workers=0, top_losses=5,
                      experiments=str(tmp_path / "experiments.csv"))
    result = fit(cfg)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["val"]["n"] == result.val["n"] > 0
    assert 0 <= result.val["macro_f1"] <= 1
    assert (tmp_path / "run" / "top_losses.csv").read_text().count(".jpg") == 5
    got = evaluate_artifact(tmp_path / "run" / "best.pt", tmp_path / "ds", split="val")
    assert got["accuracy"] == result.val["accuracy"]
