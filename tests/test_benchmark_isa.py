"""The CPU benchmarks of the AVX2 issue: `--isa avx2` keeps a run (and its children) to AVX2 in
ATen, oneDNN and MKL and says so; `--load`, `--malloc` and huge pages are applied or recorded;
the step profile splits GEMM time from the rest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_the_backbone_benchmark_runs_under_avx2_and_records_it(tmp_path):
    out = tmp_path / "backbone.json"
    command = [
        sys.executable, str(BENCHMARKS / "backbone.py"), "--isa", "avx2", "--model",
        "geomim_test", "--height", "64", "--width", "176", "--repeats", "1", "--warmup", "0",
        "--skip-bf16", "--load", "1", "--malloc", "keep", "--peak-memory", "--out", str(out),
    ]  # fmt: skip
    huge_pages = {**os.environ, "THP_MEM_ALLOC_ENABLE": "1"}
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, env=huge_pages)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "cpu capability AVX2 (emulated" in run.stdout
    machine = json.loads(out.read_text())["machine"]
    assert machine["cpu_capability"] == "AVX2"
    assert machine["native_bf16"] is False  # emulated bf16 is ~100x slower: never chosen
    assert "a real AVX2-only part can differ" in machine["isa_emulation"]
    assert "with 1 busy background process" in run.stdout
    assert machine["keeps_freed_memory"] is True
    assert machine["huge_pages"]["THP_MEM_ALLOC_ENABLE"] == "1"
    assert machine["huge_pages"]["kernel_mode"] in (None, "always", "madvise", "never")
    memory = json.loads(out.read_text())["peak_memory_gib"]  # one fresh process per config
    assert sorted(memory) == ["geomim fp32", "reference fp32"]
    for row in memory.values():
        assert row["peak_gib"] >= row["after_build_gib"] > 0.1


def test_the_step_profile_splits_gemm_from_the_rest(tmp_path):
    out = tmp_path / "profile.json"
    command = [
        sys.executable, str(BENCHMARKS / "profile_step.py"), "--config", "tiny fp32",
        "--points", "5000", "--top", "5", "--out", str(out),
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["machine"]["keeps_freed_memory"] is True  # as geomim.train runs
    assert abs(sum(report["shares"].values()) - 1) < 1e-9 and report["shares"]["GEMM"] > 0
    kinds = {row["op"]: row["kind"] for row in report["ops"]}
    assert kinds.get("aten::mm") == "GEMM" and kinds.get("aten::copy_") == "other"
    assert "self time by kind: GEMM" in run.stdout
