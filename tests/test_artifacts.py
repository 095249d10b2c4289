import json
import os
from pathlib import Path

import pytest

from fopt.artifacts import (
    InputSpec,
    atomic_path,
    card_path,
    detect_format,
    make_card,
    read_card,
    sha256_file,
    update_card_metrics,
    write_card,
    write_json_atomic,
)
from fopt.errors import InputError, OutputExistsError


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "model.onnx"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_replaces_only_when_complete(tmp_path):
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
        assert target.read_bytes() == b"old"
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_atomic_path_refuses_empty_output_and_existing_without_overwrite(tmp_path):
    target = tmp_path / "empty.bin"
    with pytest.raises(OSError, match="nothing was written"):
        with atomic_path(target):
            pass
    assert not target.exists()
    target.write_bytes(b"x")
    with pytest.raises(OutputExistsError):
        with atomic_path(target, overwrite=False):
            pass


def test_card_roundtrip_records_parent_hash_and_own_hash(tmp_path):
    parent = tmp_path / "best.pt"
    parent.write_bytes(b"parent-bytes")
    art = tmp_path / "model.onnx"
    art.write_bytes(b"onnx-bytes")
    spec = InputSpec(size=64, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))
    card = make_card(kind="onnx", format="onnx", precision="fp32", input_spec=spec,
                     class_names=["a", "b"], parent=parent, opset=17)
    write_card(art, card)
    assert card_path(art).name == "model.onnx.json"
    back = read_card(art)
    assert back["parent"]["sha256"] == sha256_file(parent)
    assert back["sha256"] == sha256_file(art)
    assert back["size_bytes"] == len(b"onnx-bytes")
    assert InputSpec.from_dict(back["input_spec"]) == spec
    assert back["versions"]["fopt"]
    update_card_metrics(art, {"accuracy": 0.5})
    assert read_card(art)["metrics"]["accuracy"] == 0.5


def test_make_card_rejects_unknown_format_and_precision():
    with pytest.raises(ValueError):
        make_card(kind="x", format="tflite", precision="fp32", input_spec=InputSpec(8), class_names=[])
    with pytest.raises(ValueError):
        make_card(kind="x", format="onnx", precision="int4", input_spec=InputSpec(8), class_names=[])


def test_read_card_errors(tmp_path):
    art = tmp_path / "m.onnx"
    with pytest.raises(InputError, match="no artifact card"):
        read_card(art)
    assert read_card(art, required=False) is None
    card_path(art).write_text("{not json")
    with pytest.raises(InputError, match="unreadable"):
        read_card(art)
    write_json_atomic(card_path(art), {"hello": 1})
    with pytest.raises(InputError, match="not a fopt artifact card"):
        read_card(art)


def test_detect_format_by_content(tmp_path, tiny_checkpoint):
    assert detect_format(tiny_checkpoint) == "checkpoint"
    onnx_file = tmp_path / "a.onnx"
    onnx_file.write_bytes(b"\x08\x07")
    assert detect_format(onnx_file) == "onnx"
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"garbage")
    with pytest.raises(InputError, match="unknown artifact format"):
        detect_format(junk)
    with pytest.raises(InputError, match="no such file"):
        detect_format(tmp_path / "missing.pt")
    with pytest.raises(InputError, match="is a folder"):
        detect_format(tmp_path)


def test_detect_format_checkpoint_without_card(tmp_path, tiny_checkpoint):
    import shutil

    copy = tmp_path / "nocard.pt"
    shutil.copy(tiny_checkpoint, copy)
    assert detect_format(copy) == "checkpoint"
    json.loads(card_path(tiny_checkpoint).read_text())  # sidecar is valid JSON


# ----------------------------------------------------------------------------- modes, temp place

@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    import os

    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_atomic_writes_get_the_mode_the_umask_gives(tmp_path, umask):
    import os
    import stat

    from fopt.artifacts import current_umask, replace_dir, write_bytes_atomic

    assert current_umask() == umask
    plain = tmp_path / "plain.txt"
    plain.write_text("x")                                  # what open() gives: the reference
    target = write_bytes_atomic(tmp_path / "model.bin", b"data")
    assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~umask
    with atomic_path(tmp_path / "lib.onnx") as tmp:        # the path libraries write themselves
        tmp.write_bytes(b"onnx")
    assert stat.S_IMODE((tmp_path / "lib.onnx").stat().st_mode) == 0o666 & ~umask

    import tempfile

    staged = Path(tempfile.mkdtemp(dir=tmp_path))          # 0700 by construction
    (staged / "a.txt").write_text("a")
    final = tmp_path / "tree"
    replace_dir(staged, final)
    assert stat.S_IMODE(final.stat().st_mode) == 0o777 & ~umask
    os.mkdir(tmp_path / "ref")
    assert stat.S_IMODE(final.stat().st_mode) == stat.S_IMODE((tmp_path / "ref").stat().st_mode)


def test_current_umask_does_not_change_it(umask):
    import os

    from fopt.artifacts import current_umask

    assert current_umask() == umask
    assert os.umask(umask) == umask                        # still what it was


def test_atomic_temp_file_lives_beside_the_target_and_is_gone_after(tmp_path):
    target = tmp_path / "sub" / "x.bin"
    seen = []
    with atomic_path(target) as tmp:
        seen.append(tmp)
        assert tmp.parent == target.parent                 # same folder: rename is atomic
        tmp.write_bytes(b"ok")
    assert not seen[0].exists() and target.read_bytes() == b"ok"
    assert [p.name for p in target.parent.iterdir()] == ["x.bin"]
    with pytest.raises(ValueError):
        with atomic_path(target) as tmp:
            assert tmp.parent == target.parent
            tmp.write_bytes(b"half")
            raise ValueError("killed")
    assert not tmp.exists() and target.read_bytes() == b"ok"
    assert [p.name for p in target.parent.iterdir()] == ["x.bin"]


# ----------------------------------------------------------------------------- temp place, several targets

@pytest.fixture
def system_tmp(tmp_path, monkeypatch):
    """The system temp folder, redirected to an empty folder this test can watch: a temporary
    made there (mkstemp without dir=) would show up in it."""
    import tempfile

    folder = tmp_path / "system-tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_atomic_paths_put_each_temp_beside_its_own_target(tmp_path, system_tmp):
    import os
    import re

    from fopt.artifacts import atomic_paths

    a = tmp_path / "run" / "nested" / "model.onnx"            # folders that do not exist yet
    b = tmp_path / "elsewhere" / "deeper" / "model.onnx.json"
    with atomic_paths(a, b) as (ta, tb):
        assert (ta.parent, tb.parent) == (a.parent, b.parent)  # not the system temp folder
        assert list(system_tmp.iterdir()) == []
        # hidden, named after target and process: the names sweep_stale and resume clean up
        assert re.fullmatch(rf"\.model\.onnx\.fopt-{os.getpid()}\..+\.tmp", ta.name), ta.name
        assert re.fullmatch(rf"\.model\.onnx\.json\.fopt-{os.getpid()}\..+\.tmp", tb.name), tb.name
        ta.write_bytes(b"graph")
        tb.write_text("{}")
    assert a.read_bytes() == b"graph" and b.read_text() == "{}"
    assert not ta.exists() and not tb.exists()
    assert [p.name for p in a.parent.iterdir()] == ["model.onnx"]
    assert [p.name for p in b.parent.iterdir()] == ["model.onnx.json"]
    assert list(system_tmp.iterdir()) == []


def test_atomic_paths_failures_leave_no_temp_and_no_target_changed(tmp_path, system_tmp):
    from fopt.artifacts import atomic_paths

    a = tmp_path / "one" / "a.bin"
    b = tmp_path / "two" / "sub" / "b.bin"
    a.parent.mkdir()
    a.write_bytes(b"old-a")

    def leftovers():
        return sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())

    # 1. an exception inside the block: both temps existed beside their targets, both are gone
    with pytest.raises(RuntimeError), atomic_paths(a, b) as (ta, tb):
        ta.write_bytes(b"new-a")
        tb.write_bytes(b"half")
        assert ta.exists() and tb.exists()
        raise RuntimeError("killed")
    assert not ta.exists() and not tb.exists()
    assert a.read_bytes() == b"old-a" and not b.exists()
    assert leftovers() == ["one/a.bin"]

    # 2. a failure at commit (nothing was written for b): a is not replaced either
    with pytest.raises(OSError, match="nothing was written"), atomic_paths(a, b) as (ta, tb):
        ta.write_bytes(b"new-a")
    assert not ta.exists() and not tb.exists()
    assert a.read_bytes() == b"old-a" and not b.exists()
    assert leftovers() == ["one/a.bin"]

    # 3. the second temp cannot even be made (its folder is a file): the first one is removed
    blocker = tmp_path / "blocker"
    blocker.write_bytes(b"a file, not a folder")
    with pytest.raises(OSError), atomic_paths(a, blocker / "c.bin"):
        pytest.fail("the block must not run")
    assert leftovers() == ["blocker", "one/a.bin"]
    assert a.read_bytes() == b"old-a"
    assert list(system_tmp.iterdir()) == []


def test_write_helpers_never_touch_the_system_temp_folder(tmp_path, system_tmp, monkeypatch):
    """The helpers that hide their temporary (write_files_atomic, write_json_atomic) stage it
    beside the target too: watch every file created while they run."""
    import tempfile

    from fopt.artifacts import write_files_atomic

    made = []
    real_mkstemp = tempfile.mkstemp

    def spy(*args, **kwargs):
        fd, path = real_mkstemp(*args, **kwargs)
        made.append(Path(path))
        return fd, path

    monkeypatch.setattr(tempfile, "mkstemp", spy)
    x = tmp_path / "t" / "table.csv"
    y = tmp_path / "m" / "mapping.json"
    write_files_atomic({x: "a,b\n", y: b"{}"})
    write_json_atomic(tmp_path / "c" / "card.json", {"k": 1})
    assert [p.parent for p in made] == [x.parent, y.parent, tmp_path / "c"]
    assert not any(p.exists() for p in made)
    assert x.read_text() == "a,b\n" and y.read_bytes() == b"{}"
    assert json.loads((tmp_path / "c" / "card.json").read_text()) == {"k": 1}
    assert list(system_tmp.iterdir()) == []


def test_a_killed_runs_temporaries_are_swept_and_a_live_ones_kept(tmp_path):
    """Temporaries carry their writer's pid: the next write removes those of processes that are
    gone (a kill -9 leftover) and leaves those of a process still writing."""
    import subprocess
    import sys

    from fopt.artifacts import write_json_atomic

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = tmp_path / f".out.json.fopt-{int(dead.stdout)}.abc.tmp"
    scratch = tmp_path / f".fopt-export.{int(dead.stdout)}.0.tmp"
    live = tmp_path / f".out.json.fopt-{os.getppid()}.def.tmp"      # our parent: alive
    users = tmp_path / f".notes.{int(dead.stdout)}.draft.tmp"        # not a name fopt makes
    for path in (stale, live, users):
        path.write_text("{half")
    scratch.mkdir()
    write_json_atomic(tmp_path / "out.json", {"a": 1})
    assert not stale.exists() and not scratch.exists()
    assert live.exists() and users.exists()
    assert json.loads((tmp_path / "out.json").read_text()) == {"a": 1}


def test_deployed_bytes_counts_an_openvino_ir_with_its_weights(tmp_path):
    from fopt.artifacts import deployed_bytes

    (tmp_path / "m.xml").write_text("<net/>")
    (tmp_path / "m.bin").write_bytes(b"\0" * 1000)
    (tmp_path / "m.onnx").write_bytes(b"\0" * 10)
    (tmp_path / "m.onnx.bin").write_bytes(b"\0" * 5)   # not an IR's weights: not counted
    assert deployed_bytes(tmp_path / "m.xml") == 6 + 1000
    assert deployed_bytes(tmp_path / "m.onnx") == 10
