"""The bench says when other work is using the CPUs it is about to measure on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fopt.bench.measure.machine import busy_warning, cpus_busy

PROC_STAT = Path("/proc/stat")


def _proc_stat_readable() -> bool:
    try:
        return PROC_STAT.read_text().startswith("cpu ")
    except OSError:
        return False


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


def _written(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("make_bad", [
    lambda d: d / "absent",                                         # no such file (not Linux)
    lambda d: d,                                                    # a folder: read_text raises OSError
    lambda d: _written(d / "empty", ""),                            # no first line
    lambda d: _written(d / "other", "intr 1 2\ncpu 1 2 3 4\n"),     # first line is not the cpu total
])
def test_cpus_busy_is_none_only_when_the_stat_file_cannot_be_read(tmp_path, make_bad):
    bad = make_bad(tmp_path)
    assert cpus_busy(0.1, stat_path=bad, cpus=2, sleep=lambda s: None) is None


def test_cpus_busy_is_none_when_no_jiffies_passed(tmp_path):
    # an unchanged counter (window shorter than one tick) has no share to report: None, not 0/0
    path = _stat(tmp_path, 1000, 1000)
    assert cpus_busy(0.1, stat_path=path, cpus=2, sleep=lambda s: None) is None


def test_cpus_busy_bounds_on_a_fully_busy_and_a_fully_idle_window(tmp_path):
    path = _stat(tmp_path, 1000, 1000)
    assert cpus_busy(0.1, stat_path=path, cpus=4, sleep=lambda s: _stat(tmp_path, 1400, 1000)) == 4.0
    path = _stat(tmp_path, 1000, 1000)
    assert cpus_busy(0.1, stat_path=path, cpus=4, sleep=lambda s: _stat(tmp_path, 1000, 1400)) == 0.0


@pytest.mark.skipif(not _proc_stat_readable(), reason="needs Linux /proc/stat")
def test_cpus_busy_on_this_machine_is_a_number_of_cpus():
    # The value is busy *CPUs* (share of the window x cpu count), so 0 <= busy <= os.cpu_count();
    # with a readable /proc/stat and a 0.2 s window (>= 20 jiffies per CPU) it is never None.
    busy = cpus_busy(0.2)
    assert isinstance(busy, float)
    assert 0.0 <= busy <= os.cpu_count()
    share = cpus_busy(0.2, cpus=1)                   # cpus=1: the plain busy fraction
    assert isinstance(share, float) and 0.0 <= share <= 1.0


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
    assert "busy_warning" in s
    busy = s["cpus_busy_at_start"]
    if _proc_stat_readable():
        # Linux: a measured number of busy CPUs, never None; the warning follows from it
        assert isinstance(busy, float) and 0.0 <= busy <= os.cpu_count()
        assert s["busy_warning"] == busy_warning(1, busy)
    else:
        assert busy is None and s["busy_warning"] is None
