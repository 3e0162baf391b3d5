"""geomim.allocator: freed memory stays in the process, so a new large tensor of the same size
does not page-fault its memory in again."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from geomim.allocator import keep_freed_memory

FAULTS = """
import json, resource, sys, torch
from geomim.allocator import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
faults = []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(64 << 20, dtype=torch.uint8)  # 64 MiB, written, then freed
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"kept": kept, "faults": faults}))
"""


def page_faults(mode: str) -> dict:
    run = subprocess.run(
        [sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True
    )
    return json.loads(run.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc: Linux")
def test_a_freed_block_is_reused_without_page_faults():
    system, kept = page_faults("system"), page_faults("keep")
    pages = (64 << 20) // 4096
    assert min(system["faults"][1:]) > pages // 2  # glibc maps and unmaps it every time
    # kept: the block comes back from the heap (a small allocation that lands in the freed
    # space in between can make the heap grow once more, so not on every round)
    assert kept["kept"] and min(kept["faults"][1:]) < pages // 20
    assert sum(kept["faults"][1:]) < sum(system["faults"][1:]) / 2


def test_without_a_c_library_to_find_it_reports_that_nothing_changed(monkeypatch):
    monkeypatch.setattr("ctypes.util.find_library", lambda name: None)
    assert keep_freed_memory.__wrapped__() is False  # uncached: this call's own answer
