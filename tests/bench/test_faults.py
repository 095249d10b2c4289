"""Page faults: counted per call, priced by the calibration, added to the calibrated estimate."""

from __future__ import annotations

import pytest

from fopt.bench.measure.faults import (
    PAGE_BYTES,
    faults_per_run,
    minor_faults,
    page_fault_probe,
)

pytestmark = pytest.mark.skipif(minor_faults() is None, reason="getrusage is not available here")

BIG = 64 * 2 ** 20  # above glibc's mmap threshold cap: a fresh mapping every time


def _fresh_touch():
    # torch, not numpy: numpy asks for transparent huge pages on large arrays (one fault per 2 MiB)
    import torch

    torch.ones(BIG // 4)  # allocated, every page written, freed (unmapped)


def test_a_fresh_large_buffer_faults_every_page_and_a_reused_one_none():
    import torch

    reused = torch.empty(BIG // 4)
    reused.fill_(1.0)
    fresh = faults_per_run(_fresh_touch)
    again = faults_per_run(lambda: reused.fill_(2.0))
    pages = BIG // PAGE_BYTES
    assert 0.9 * pages <= fresh <= 1.1 * pages
    assert again < 0.01 * pages


def test_page_fault_probe_prices_one_fault():
    pf = page_fault_probe(threads=1, nbytes=BIG, reps=3)
    assert pf["faults"] >= 0.9 * pf["pages"]
    assert pf["fresh_s"] > pf["reused_s"]
    # zeroing and mapping a 4 KiB page takes between 10 ns and 100 us on any machine we know
    assert 1e-8 < pf["seconds_per_fault"] < 1e-4


def _row(faults, calibrated=2.0, p50_ms=5.0):
    from fopt.bench.rows import BenchRow
    from fopt.runtime.timing import summarize

    row = BenchRow(artifact="m.pt", batch_size=1, backend="torch-eager", precision="fp32")
    row.stats = summarize([p50_ms / 1e3] * 5)
    row.page_faults = faults
    row.estimate_ms["calibrated"] = calibrated
    row.estimate_detail = {"total_ms": calibrated}
    return row


def test_counted_faults_are_added_at_the_calibrated_price():
    from fopt.bench.estimates import price_page_faults

    cal = {"probes": {"page_faults": {"seconds_per_fault": 1e-6}}}
    row = _row(faults=1000)
    price_page_faults(row, cal)
    assert row.estimate_ms["calibrated"] == pytest.approx(3.0)
    assert row.estimate_detail["page_faults_ms"] == pytest.approx(1.0)
    assert row.estimate_detail["total_ms"] == pytest.approx(3.0)
    assert any("page faults: 1000 per run" in n for n in row.estimate_notes)  # 20% of the p50
    assert row.to_dict()["page_faults_per_run"] == 1000

    quiet = _row(faults=10)
    price_page_faults(quiet, cal)
    assert quiet.estimate_ms["calibrated"] == pytest.approx(2.01) and not quiet.estimate_notes


def test_a_calibration_without_the_price_says_so_and_changes_nothing():
    from fopt.bench.estimates import price_page_faults

    row = _row(faults=1000)
    price_page_faults(row, {"probes": {}})
    assert row.estimate_ms["calibrated"] == 2.0
    assert any("calibrate` again" in n for n in row.estimate_notes)


def test_op_times_can_take_each_calls_page_faults_off():
    import torch

    from fopt.bench.measure.profile import torch_op_times

    class Fresh(torch.nn.Module):
        def forward(self, x):
            return x + torch.ones(BIG // 4)  # a fresh 64 MiB result: faults on every call

    x = torch.zeros(BIG // 4)
    raw = torch_op_times(Fresh(), x, 2, runs=3)
    priced = torch_op_times(Fresh(), x, 2, runs=3, fault_price_s=1.0)  # a fault "costs" 1 s
    assert all(t is not None and t > 0 for t in raw)
    assert priced == [0.0, 0.0]  # every call faulted, so nothing is left at that price



_HEAP_HOLDS_FREE_MEMORY = """
import json, torch
from fopt.bench.measure.faults import faults_per_run, page_fault_probe
blocks = [torch.ones(30 * 2 ** 20 // 4) for _ in range(3)]   # below the mmap threshold: the heap
del blocks                                                   # freed, and kept (no trim)
size = 20 * 2 ** 20
plain = faults_per_run(lambda: torch.empty(size // 4).fill_(1.0))
print(json.dumps({"plain": plain, "probe": page_fault_probe(threads=1, nbytes=size, reps=3)}))
"""


def test_the_probe_faults_even_where_the_allocator_would_serve_its_block():
    """In a process whose heap holds free memory, a block is served without a fault (after a full
    calibration, the probe once counted none there and priced nothing); the probe maps its own."""
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(32 * 2 ** 20), MALLOC_TRIM_THRESHOLD_=str(2 ** 30))
    out = subprocess.run([sys.executable, "-c", _HEAP_HOLDS_FREE_MEMORY], env=env, capture_output=True,
                         text=True, timeout=120, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    pages = 20 * 2 ** 20 // PAGE_BYTES
    assert res["plain"] < 0.01 * pages      # the situation: a plain allocation no longer faults
    assert res["probe"]["faults"] >= 0.9 * pages
    assert 1e-8 < res["probe"]["seconds_per_fault"] < 1e-4
