"""Every way a user can hand `fopt export` something wrong: one `error:` line, exit 2, no file left."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from fopt.cli import cli


@pytest.fixture
def ckpt(tiny_checkpoint, tmp_path):
    """A private copy of the tiny checkpoint (and its card) in an empty folder."""
    path = tmp_path / "ckpt" / "tiny.pt"
    path.parent.mkdir()
    shutil.copy(tiny_checkpoint, path)
    shutil.copy(tiny_checkpoint.with_name("tiny.pt.json"), path.with_name("tiny.pt.json"))
    return path


def run(*args: str):
    return CliRunner().invoke(cli, ["export", *map(str, args)])


def assert_one_error(res, *needles: str) -> str:
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.stderr
    assert "Traceback" not in res.output
    for n in needles:
        assert n.lower() in errors[0].lower(), errors[0]
    return errors[0]


def leftovers(folder) -> list[str]:
    """Model files or temporaries in `folder` (the checkpoint and its card excluded)."""
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.rglob("*") if p.is_file() and not p.name.startswith("tiny.pt"))


def test_a_good_export_works_first(ckpt, tmp_path):
    out = tmp_path / "out"
    res = run(ckpt, "--out", out)
    assert res.exit_code == 0, res.output
    assert leftovers(out) == ["tiny.onnx", "tiny.onnx.json", "tiny.torchscript.pt", "tiny.torchscript.pt.json"]


def test_not_a_fopt_checkpoint(tmp_path):
    import torch

    text = tmp_path / "notes.pt"
    text.write_text("hello")
    assert_one_error(run(text, "--out", tmp_path / "out"), "not a fopt checkpoint")
    bare = tmp_path / "bare.pt"
    torch.save({"w": torch.zeros(2)}, bare)  # a state dict, not a fopt checkpoint
    assert_one_error(run(bare, "--out", tmp_path / "out"), "not a fopt checkpoint")
    assert_one_error(run(tmp_path / "missing.pt"), "no such file")
    assert leftovers(tmp_path / "out") == []


def test_checkpoint_whose_model_is_not_in_the_registry(ckpt, tmp_path):
    import torch

    raw = torch.load(ckpt, weights_only=True)
    raw["card"]["model"]["name"] = "resnet9000"
    odd = tmp_path / "odd.pt"
    torch.save(raw, odd)
    assert_one_error(run(odd, "--out", tmp_path / "out"), "resnet9000", "registry")
    assert leftovers(tmp_path / "out") == []


def test_unwritable_output_folder(ckpt, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    assert_one_error(run(ckpt, "--out", blocker / "sub"), str(blocker))
    assert leftovers(ckpt.parent) == []


def _without_dac_override() -> list[str] | None:
    """A command prefix under which folder permissions apply, or None where there is none.

    Root ignores folder permissions (CAP_DAC_OVERRIDE). `unshare --user` runs the command in a new
    user namespace, where it keeps root's uid on the files (so it can still read the checkpoint in
    pytest's 0700 temp folder) but has no capability over them: the owner bits decide, exactly
    as for an ordinary user. Non-root needs no prefix.
    """
    import os
    import subprocess

    if os.geteuid() != 0:
        return []
    prefix = [shutil.which("unshare") or "unshare", "--user", "--map-user=65534"]
    try:
        ok = subprocess.run([*prefix, "true"], capture_output=True, timeout=30, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return prefix if ok else None


def test_read_only_output_folder(ckpt, tmp_path):
    import os
    import subprocess
    import sys

    prefix = _without_dac_override()
    if prefix is None:
        pytest.skip("running as root and `unshare --user` is not permitted here (no user namespaces), "
                    "so nothing makes root respect folder permissions")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        # the same permission check the CLI will meet: a plain write must fail under the prefix
        probe = subprocess.run([*prefix, sys.executable, "-c", f"open({str(ro / 'probe')!r}, 'w')"],
                               capture_output=True, text=True, timeout=60, check=False)
        assert probe.returncode != 0 and "PermissionError" in probe.stderr, probe.stderr
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        proc = subprocess.run([*prefix, sys.executable, "-m", "fopt", "export", str(ckpt), "--out", str(ro)],
                              capture_output=True, text=True, timeout=300, env=env, check=False)
    finally:
        ro.chmod(0o700)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "writ" in errors[0].lower() and str(ro) in errors[0], errors[0]
    assert list(ro.iterdir()) == [] and leftovers(ckpt.parent) == []


def test_existing_output_needs_force(ckpt, tmp_path):
    out = tmp_path / "out"
    assert run(ckpt, "--onnx", "--out", out).exit_code == 0
    first = (out / "tiny.onnx").stat().st_mtime_ns
    assert_one_error(run(ckpt, "--onnx", "--out", out), "exists", "--force")
    assert (out / "tiny.onnx").stat().st_mtime_ns == first
    # both formats: the existing ONNX is refused before TorchScript is written
    assert_one_error(run(ckpt, "--out", out), "exists")
    assert not (out / "tiny.torchscript.pt").exists()
    res = run(ckpt, "--onnx", "--out", out, "--force")
    assert res.exit_code == 0, res.output
    assert (out / "tiny.onnx").stat().st_mtime_ns != first


@pytest.mark.parametrize("opset", ["7", "99"])
def test_opset_the_exporter_cannot_produce(ckpt, tmp_path, opset):
    assert_one_error(run(ckpt, "--onnx", "--opset", opset, "--out", tmp_path / "out"), "opset", opset)
    assert leftovers(tmp_path / "out") == []


def test_error_inside_torch_onnx_leaves_no_file(ckpt, tmp_path, monkeypatch):
    import torch

    def broken(*args, **kwargs):
        raise RuntimeError("Unsupported: ONNX export of operator frobnicate\nsecond line of detail")

    monkeypatch.setattr(torch.onnx, "export", broken)
    line = assert_one_error(run(ckpt, "--onnx", "--out", tmp_path / "out"), "frobnicate")
    assert "second line" not in line
    assert leftovers(tmp_path / "out") == []


def test_parity_over_tolerance_removes_the_file(ckpt, tmp_path, monkeypatch):
    from fopt.runtime.onnxrt import OnnxRuntimeRunner

    real = OnnxRuntimeRunner._run_impl
    monkeypatch.setattr(OnnxRuntimeRunner, "_run_impl", lambda self, x: real(self, x) + 0.5)
    assert_one_error(run(ckpt, "--onnx", "--out", tmp_path / "out"), "tiny.onnx", "differs", "max abs diff")
    assert leftovers(tmp_path / "out") == []


def test_parity_within_a_loose_tolerance_passes(ckpt, tmp_path, monkeypatch):
    from fopt.runtime.onnxrt import OnnxRuntimeRunner

    real = OnnxRuntimeRunner._run_impl
    monkeypatch.setattr(OnnxRuntimeRunner, "_run_impl", lambda self, x: real(self, x) + 0.5)
    res = run(ckpt, "--onnx", "--out", tmp_path / "out", "--atol", "1")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "tiny.onnx").exists()


def test_output_shape_mismatch_is_fatal_even_with_huge_tolerance(ckpt, tmp_path, monkeypatch):
    from fopt.runtime.pytorch import TorchScriptRunner

    real = TorchScriptRunner._to_numpy_impl
    monkeypatch.setattr(TorchScriptRunner, "_to_numpy_impl", lambda self, y: np.asarray(real(self, y))[:, :-1])
    assert_one_error(run(ckpt, "--torchscript", "--out", tmp_path / "out", "--atol", "1e9"), "shape")
    assert leftovers(tmp_path / "out") == []


def test_cuda_without_a_gpu(ckpt, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert_one_error(run(ckpt, "--device", "cuda", "--out", tmp_path / "out"), "cuda")
    assert leftovers(tmp_path / "out") == []


@pytest.mark.parametrize("args", [["--batch", "0"], ["--batch", "many"], ["--img-size", "0"],
                                  ["--atol", "-1"]])
def test_bad_option_values(ckpt, tmp_path, args):
    res = run(ckpt, "--out", tmp_path / "out", *args)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert leftovers(tmp_path / "out") == []
