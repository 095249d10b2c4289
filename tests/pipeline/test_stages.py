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
    ledger = StageLedger(tmp_path / "stages.json")

    def boom():
        raise RuntimeError("x")

    try:
        ledger.run(Stage("s", boom))
    except RuntimeError:
        pass
    assert "s" not in StageLedger(tmp_path / "stages.json").records
