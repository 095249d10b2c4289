"""fit(): what a run writes, what it learns, freezing and pretrained weights."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from fopt.errors import CheckpointError, InputError, UsageError

RUN_FILES = ("best.pt", "last.pt", "history.csv", "curves.png", "report.json",
             "classification_report.txt", "confusion_matrix.png", "top_losses.csv", "config.json")


def test_fit_writes_every_file_and_learns(trained_run, synth_dataset):
    from fopt.data.datasets import DatasetTable

    cfg, result = trained_run
    run = result.run_dir
    for name in RUN_FILES:
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    for name in ("best.pt.json", "last.pt.json"):  # sidecar cards
        assert json.loads((run / name).read_text())["format"] == "checkpoint"
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with open(run / "history.csv") as f:
        history = list(csv.DictReader(f))
    assert [int(h["epoch"]) for h in history] == [1, 2, 3]
    losses = [float(h["train_loss"]) for h in history]
    # Chance level for 6 classes is ln 6 = 1.79; training must move below where it started.
    assert losses[-1] < losses[0]
    for h in history:
        assert float(h["images_per_s"]) > 0 and float(h["seconds"]) > 0

    report = json.loads((run / "report.json").read_text())
    table = DatasetTable.load(synth_dataset)
    assert report["val"]["n"] == len(table.split("val"))
    assert 0 <= report["val"]["accuracy"] <= 1 and 0 <= report["val"]["macro_f1"] <= 1
    assert set(report["val"]["per_class"]) == set(table.class_names)
    assert report["test"]["n"] == len(table.split("test"))
    # best.pt is the epoch with the highest validation macro-F1, and the report describes it.
    f1s = [float(h["val_macro_f1"]) for h in history]
    assert report["best_epoch"] == int(np.argmax(f1s)) + 1 == result.best_epoch
    assert report["val"]["macro_f1"] == pytest.approx(max(f1s))
    text = (run / "classification_report.txt").read_text()
    assert "macro avg" in text and all(name in text for name in table.class_names)

    with open(run / "top_losses.csv") as f:
        top = list(csv.DictReader(f))
    assert len(top) == 10
    assert [float(r["loss"]) for r in top] == sorted((float(r["loss"]) for r in top), reverse=True)
    train_paths = set(table.split("train")["path"])
    assert all(r["path"] in train_paths for r in top)

    with open(cfg.experiments) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["model"] == "tiny" and int(rows[0]["best_epoch"]) == result.best_epoch
    assert float(rows[0]["val_macro_f1"]) == pytest.approx(result.val["macro_f1"], abs=1e-6)
    config = json.loads((run / "config.json").read_text())
    assert config["global_batch_size"] == 8 and config["world_size"] == 1


def test_fit_learns_the_training_images_well_above_chance(trained_run):
    """The 3-epoch run must have learnt something, not just lowered its loss a little.

    Measured on the train split with the eval transform (the 8 val / 13 test images are too few
    to tell a small learning signal from luck). Chance is 1/6; for n = 99 images a guessing model
    scores 1/6 +- sqrt(p (1-p) / n) = 0.167 +- 0.037, so 2x chance (0.333) is 4.5 standard
    deviations above guessing. (Measured: 0.57-0.60 for seeds 0-2.)
    """
    from fopt.data.datasets import DatasetTable
    from fopt.evaluation import evaluate_artifact

    cfg, result = trained_run
    table = DatasetTable.load(cfg.data)
    n_train, k = len(table.split("train")), len(table.class_names)
    chance = 1 / k
    got = evaluate_artifact(result.run_dir / "best.pt", cfg.data, split="train", batch_size=64)
    assert got["n"] == n_train
    sigma = (chance * (1 - chance) / n_train) ** 0.5
    assert 2 * chance > chance + 4 * sigma                 # the margin means something at this n
    assert got["accuracy"] > 2 * chance, got
    # the loss moved clearly off the uniform-prediction value ln k, not just below epoch 1
    with open(result.run_dir / "history.csv") as f:
        last_loss = float(list(csv.DictReader(f))[-1]["train_loss"])
    assert last_loss < 0.9 * math.log(k)


def test_checkpoint_contract(trained_run):
    from fopt.checkpoint import load_checkpoint, read_checkpoint

    cfg, result = trained_run
    best = load_checkpoint(result.run_dir / "best.pt")
    assert best.model_name == "tiny"
    assert best.input_spec.size == 32 and best.input_spec.mean == (0.5, 0.5, 0.5)
    assert best.card["config"]["lr"] == cfg.lr
    assert best.card["metrics"]["epoch"] == result.best_epoch
    assert best.card["versions"]["torch"]
    last = read_checkpoint(result.run_dir / "last.pt")
    ts = last["train_state"]
    assert ts["epoch"] == 3 and {"optimizer", "scheduler", "scaler", "rng", "history"} <= set(ts)
    assert "train_state" not in read_checkpoint(result.run_dir / "best.pt")


def test_fit_reports_equal_fopt_eval(trained_run):
    """report.json (computed in the training loop) and evaluate_artifact (through the runner)
    must agree on the same checkpoint and split."""
    from fopt.evaluation import evaluate_artifact

    cfg, result = trained_run
    for split, expected in (("val", result.val), ("test", result.test)):
        got = evaluate_artifact(result.run_dir / "best.pt", cfg.data, split=split, batch_size=16)
        assert got["n"] == expected["n"]
        assert got["accuracy"] == pytest.approx(expected["accuracy"])
        assert got["macro_f1"] == pytest.approx(expected["macro_f1"])


def test_freeze_backbone_trains_only_the_head(synth_dataset, tmp_path):
    from fopt.checkpoint import read_checkpoint
    from fopt.train.config import TrainConfig
    from fopt.train.engine import build_model, fit, seed_everything

    cfg = TrainConfig(data=str(synth_dataset), model="tiny", out=str(tmp_path / "run"), epochs=1,
                      batch_size=8, img_size=32, workers=0, freeze_backbone=True, top_losses=0,
                      experiments=str(tmp_path / "exp.csv"))
    seed_everything(cfg.seed)
    initial = build_model(cfg, 6)[0].state_dict()
    fit(cfg)
    trained = read_checkpoint(tmp_path / "run" / "last.pt")["state_dict"]
    changed = {k for k in initial if not torch.equal(initial[k], trained[k])}
    # Only the final Linear (index 7 of the Sequential) moves; BatchNorm running stats stay put.
    assert changed == {"7.weight", "7.bias"}


def test_list_models_counts_match_torchvision():
    import torchvision

    from fopt.models import list_models

    rows = {r["name"]: r for r in list_models(1000)}
    assert set(rows) >= {"vgg16", "resnet18", "resnet50", "efficientnet_b0", "efficientnet_b7",
                         "mobilenet_v3_small", "mobilenet_v3_large", "tiny"}
    ref = sum(p.numel() for p in torchvision.models.resnet18().parameters())
    assert rows["resnet18"]["params"] == ref


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home" / "hub" / "checkpoints"


def test_pretrained_imagenet_absent_is_a_clear_error(hub_dir):
    from fopt.models import build_model, load_pretrained

    model = build_model("mobilenet_v3_small", 6)
    with pytest.raises(InputError, match=r"put mobilenet_v3_small-.*\.pth .* into .*checkpoints"):
        load_pretrained(model, "mobilenet_v3_small", "imagenet")
    with pytest.raises(UsageError, match="no ImageNet weights"):
        load_pretrained(build_model("tiny", 6), "tiny", "imagenet")


def test_pretrained_imagenet_from_local_cache_loads_backbone(hub_dir):
    """A 1000-class file in the hub cache loads into a 6-class model: backbone equal, head kept."""
    from fopt.models import build_model, imagenet_weights_file, load_pretrained

    torch.manual_seed(1)
    source = build_model("mobilenet_v3_small", 1000).state_dict()
    path = imagenet_weights_file("mobilenet_v3_small")
    assert path.parent == hub_dir
    path.parent.mkdir(parents=True)
    torch.save(source, path)
    torch.manual_seed(2)
    model = build_model("mobilenet_v3_small", 6)
    head_before = model.classifier[3].weight.clone()
    info = load_pretrained(model, "mobilenet_v3_small", "imagenet")
    assert info["skipped"] == ["classifier.3.weight", "classifier.3.bias"]
    state = model.state_dict()
    assert torch.equal(state["features.0.0.weight"], source["features.0.0.weight"])
    assert torch.equal(state["classifier.0.weight"], source["classifier.0.weight"])
    assert torch.equal(model.classifier[3].weight, head_before)


def test_pretrained_path_rejects_other_architectures(tmp_path):
    from fopt.models import build_model, load_pretrained

    path = tmp_path / "resnet.pt"
    torch.save(build_model("resnet18", 6).state_dict(), path)
    with pytest.raises(CheckpointError, match="do not fit tiny"):
        load_pretrained(build_model("tiny", 6), "tiny", str(path))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a state dict")
    with pytest.raises(CheckpointError, match="not a loadable state dict"):
        load_pretrained(build_model("tiny", 6), "tiny", str(junk))
    # A fopt checkpoint works as --pretrained PATH too (fine-tuning a previous run).
    from fopt.artifacts import InputSpec
    from fopt.checkpoint import save_checkpoint

    torch.manual_seed(3)
    src = build_model("tiny", 6)
    ckpt = save_checkpoint(tmp_path / "prev.pt", src, model_name="tiny", model_kwargs={"num_classes": 6},
                           class_names=list("abcdef"), input_spec=InputSpec(size=32))
    dst = build_model("tiny", 6)
    load_pretrained(dst, "tiny", str(ckpt))
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))


def test_bad_options_are_usage_errors(synth_dataset, tmp_path):
    from fopt.train.config import TrainConfig
    from fopt.train.engine import fit

    base = dict(data=str(synth_dataset), model="tiny", out=str(tmp_path / "r"), img_size=32,
                workers=0, experiments=str(tmp_path / "e.csv"))
    with pytest.raises(UsageError, match="--amp needs CUDA"):
        fit(TrainConfig(**base, amp=True, device="cpu"))
    with pytest.raises(UsageError, match="--epochs"):
        fit(TrainConfig(**base, epochs=0))
    with pytest.raises(UsageError, match="unknown model"):
        fit(TrainConfig(**{**base, "model": "resnet19"}))


def test_existing_run_is_not_overwritten_without_force(trained_run, tmp_path):
    from click.testing import CliRunner

    from fopt.cli import cli

    cfg, result = trained_run
    res = CliRunner().invoke(cli, ["train", "--data", cfg.data, "--model", "tiny",
                                   "--out", str(result.run_dir), "--experiments", str(tmp_path / "e.csv")])
    assert res.exit_code == 2 and "already holds a run" in res.output and "--resume" in res.output


def test_precise_bn_replaces_lagging_running_statistics_by_the_data_average():
    import torch

    from fopt.train.engine import recompute_bn_stats

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4, momentum=0.01),
                              torch.nn.BatchNorm2d(4))
    frozen = net[2]
    frozen.eval()                                  # as frozen_norm_eval leaves a frozen layer
    frozen.running_mean.fill_(7.0)
    images = [torch.randn(8, 3, 5, 5) * 3 + 2 for _ in range(4)]
    with torch.no_grad():
        conv_out = torch.cat([net[0](x) for x in images])
    want_mean = conv_out.mean(dim=(0, 2, 3))
    want_var = conv_out.var(dim=(0, 2, 3), unbiased=True)
    net[1].train()
    assert not torch.allclose(net[1].running_mean, want_mean, atol=0.1)  # still near its init (0)

    n = recompute_bn_stats(net, [(x, torch.zeros(8)) for x in images], torch.device("cpu"))
    assert n == 1
    # equal-size batches: the average of the per-batch statistics is the data's mean; the
    # variance is the average of the per-batch (unbiased) variances, close to the data's
    assert torch.allclose(net[1].running_mean, want_mean, atol=1e-5)
    assert torch.allclose(net[1].running_var, want_var, rtol=0.1)
    assert net[1].momentum == 0.01                 # restored
    assert torch.all(frozen.running_mean == 7.0)   # eval-mode (frozen) BatchNorm untouched


def test_precise_bn_option_is_validated():
    from fopt.train.config import TrainConfig

    with pytest.raises(UsageError, match="--precise-bn"):
        TrainConfig(data="d", model="tiny", out="o", precise_bn=-1).validate()
