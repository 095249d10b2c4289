"""The bench says when other work is using the CPUs it is about to measure on."""

from __future__ import annotations

from fopt.bench.measure.machine import busy_warning, cpus_busy


def _stat(tmp_path, busy, idle):
    p = tmp_path / "stat"
    p.write_text(f"cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\ncpu0 1 2 3 4\n")
    return p


def test_cpus_busy_is_the_busy_share_of_the_window_times_the_cpus(tmp_path):
    path = _stat(tmp_path, 1000, 1000)

    def advance(_s):  # during the window: 150 busy and 50 idle jiffies
        _stat(tmp_path, 1150, 1050)

    assert cpus_busy(0.1, stat_path=path, cpus=2, sleep=advance) == 1.5
    assert cpus_busy(0.1, stat_path=tmp_path / "absent", cpus=2, sleep=lambda s: None) is None


def test_busy_warning_only_when_the_threads_do_not_fit():
    assert busy_warning(2, 0.1, cpus=2) is None
    assert busy_warning(1, 1.0, cpus=2) is None
    msg = busy_warning(2, 1.5, cpus=2)
    assert msg and "1.5 of 2 CPUs" in msg and "--clock thread-cpu" in msg
    assert busy_warning(2, None, cpus=2) is None


def test_bench_records_how_busy_the_machine_was(bench_dir):
    from fopt.bench.run import bench_artifacts
    from fopt.runtime.timing import StopRule

    res = bench_artifacts([bench_dir / "tiny.onnx"], batch_sizes=[1], threads=1, estimate=False,
                          rule=StopRule(min_time_s=0.02, warmup_iters=1, warmup_s=0.0))
    s = res.to_dict()["settings"]
    assert "busy_warning" in s and (s["cpus_busy_at_start"] is None or s["cpus_busy_at_start"] >= 0)
