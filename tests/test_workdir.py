"""Folders fopt owns (the ledger) and the one-writer lock."""

from __future__ import annotations

import multiprocessing
import os

import pytest

from fopt.errors import BusyError, OutputExistsError
from fopt.workdir import LEDGER_NAME, OwnedFolder, exclusive, lock_path


def test_claim_creates_or_adopts_and_refuses_a_users_folder(tmp_path):
    new = OwnedFolder.claim(tmp_path / "run")
    assert (tmp_path / "run" / LEDGER_NAME).is_file() and new.paths == set()
    empty = tmp_path / "empty"
    empty.mkdir()
    OwnedFolder.claim(empty)
    users = tmp_path / "photos"
    users.mkdir()
    (users / "beach.jpg").write_bytes(b"x")
    with pytest.raises(OutputExistsError, match="not made by fopt"):
        OwnedFolder.claim(users)
    assert sorted(p.name for p in users.iterdir()) == ["beach.jpg"]   # nothing written there


def test_only_recorded_paths_are_removed(tmp_path):
    run = OwnedFolder.claim(tmp_path / "run")
    (run.root / "model").mkdir()
    (run.root / "model" / "best.pt").write_bytes(b"w")
    run.record(run.root / "model")
    (run.root / "notes.txt").write_text("mine")
    again = OwnedFolder.claim(run.root)          # the ledger survives a new process
    assert again.owns(run.root / "model" / "best.pt") and not again.owns(run.root / "notes.txt")
    assert [p.name for p in again.foreign()] == ["notes.txt"]
    with pytest.raises(OutputExistsError, match="not written by fopt"):
        again.remove(run.root / "notes.txt")
    again.remove(run.root / "model")
    assert not (run.root / "model").exists() and (run.root / "notes.txt").read_text() == "mine"
    assert OwnedFolder.of(run.root).paths == set()


def _hold(target, ready, release):
    with exclusive(target):
        ready.set()
        release.wait(10)


def test_a_second_writer_is_refused_and_a_dead_ones_lock_is_taken_over(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold, args=(str(tmp_path), ready, release))
    p.start()
    try:
        assert ready.wait(30)
        with pytest.raises(BusyError, match="another fopt process"):
            with exclusive(tmp_path):
                pass
    finally:
        release.set()
        p.join(30)
    # a lock whose process is gone (pid of the finished child) is stale: taken over
    lock_path(tmp_path).write_text(f"{p.pid}@{os.uname().nodename}")
    with exclusive(tmp_path) as held:
        assert held.read_text().startswith(str(os.getpid()))
    assert not lock_path(tmp_path).exists()
