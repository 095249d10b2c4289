import pytest

from fopt.pipeline.stages import Stage, StageLedger


def test_stage_skips_when_inputs_and_params_unchanged(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("v1")
    out = tmp_path / "out.txt"
    calls = []

    def make():
        calls.append(1)
        out.write_text(src.read_text().upper())

    def stage(params=None):
        return Stage("upper", make, inputs=[src], outputs=[out], params=params or {"k": 1})

    ledger = StageLedger(tmp_path / "stages.json")
    assert ledger.run(stage())[0] == "ran"
    assert StageLedger(tmp_path / "stages.json").run(stage())[0] == "skipped"  # fresh process
    assert len(calls) == 1
    src.write_text("v2")                                   # input hash changed
    assert ledger.run(stage())[0] == "ran" and out.read_text() == "V2"
    assert ledger.run(stage({"k": 2}))[0] == "ran"         # option changed
    out.unlink()                                           # output lost
    assert ledger.run(stage({"k": 2}))[0] == "ran"
    assert ledger.run(stage({"k": 2}), force=True)[0] == "ran"
    assert len(calls) == 5


def test_failed_stage_is_not_recorded(tmp_path):
    ledger_path = tmp_path / "stages.json"
    ledger = StageLedger(ledger_path)
    src = tmp_path / "in.txt"
    src.write_text("v1")
    out = tmp_path / "out.txt"
    fail = []

    def make():
        if fail:
            out.write_text("half")                        # a partial output, then the crash
            raise RuntimeError("x")
        out.write_text(src.read_text())

    def boom():
        raise RuntimeError("x")

    ok = Stage("ok", make, inputs=[src], outputs=[out])
    assert ledger.run(ok)[0] == "ran"
    before = ledger_path.read_bytes()

    with pytest.raises(RuntimeError, match="^x$"):
        ledger.run(Stage("s", boom))
    # neither the in-memory ledger nor the file on disk learned about the failed stage
    assert set(ledger.records) == {"ok"}
    assert ledger_path.read_bytes() == before
    assert set(StageLedger(ledger_path).records) == {"ok"}

    # a recorded stage that fails on re-run keeps its old record, but that record no longer
    # matches the inputs, so the stage is not skipped next time despite its (partial) output
    src.write_text("v2")
    fail.append(1)
    with pytest.raises(RuntimeError, match="^x$"):
        ledger.run(ok)
    assert ledger_path.read_bytes() == before and out.read_text() == "half"
    fresh = StageLedger(ledger_path)
    assert not fresh.is_fresh(ok)
    fail.clear()
    assert fresh.run(ok)[0] == "ran" and out.read_text() == "v2"
    assert fresh.run(ok)[0] == "skipped"
