"""benchmarks/gpu.sh, the prepared GPU run, cannot rot: its dry run takes every step on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu.sh"
STEPS = [
    "install",
    "check",
    "tests",
    "kernels-fp32",
    "pretrain",
    "backbone",
    "nccl",
    "kernels-bf16",
    "deterministic",
]
REPORTS = [
    "check",
    "kernels-fp32",
    "kernels-bf16",
    "pretrain",
    "backbone",
    "deterministic",
    "steps",
]


def test_the_dry_run_takes_every_step_and_brings_back_few_enough_files(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "DEADLINE_S": "900"}
    run = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run"], env=env, capture_output=True, text=True, timeout=1200
    )
    log = (tmp_path / "gpu.log").read_text() if (tmp_path / "gpu.log").exists() else ""
    assert run.returncode == 0, run.stdout + run.stderr + log[-4000:]
    steps = json.loads((tmp_path / "steps.json").read_text())
    assert [s["step"] for s in steps["steps"]] == STEPS
    assert steps["failed"] == [] and steps["device"] == "cpu"
    for name in REPORTS:
        assert json.loads((tmp_path / f"{name}.json").read_text()), name
    check = json.loads((tmp_path / "check.json").read_text())
    assert check["failed"] == 0 and check["passed"] > 0
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) <= 8  # the device tool brings back at most 8 files


def test_unknown_arguments_are_refused():
    run = subprocess.run(["bash", str(SCRIPT), "--fast"], capture_output=True, text=True)
    assert run.returncode == 2 and "usage" in run.stderr


def test_a_partial_rerun_skips_steps_and_passes_check_arguments(tmp_path):
    env = {
        **os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "DEADLINE_S": "300",
        "SKIP": " ".join(s for s in STEPS if s not in ("install", "check")),
        "CHECK_ARGS": "--backends reference --skip-steps --ops row_attention",
    }  # fmt: skip
    run = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run"], env=env, capture_output=True, text=True, timeout=600
    )
    log = (tmp_path / "gpu.log").read_text()
    assert run.returncode == 0, run.stdout + run.stderr + log[-4000:]
    assert "\ngeomim " in log  # the install step's function ran (through bash -c)
    steps = {s["step"]: s for s in json.loads((tmp_path / "steps.json").read_text())["steps"]}
    assert [n for n, s in steps.items() if s.get("note") == "skipped (SKIP)"] == STEPS[2:]
    results = json.loads((tmp_path / "check.json").read_text())["results"]
    assert {(r["op"], r["backend"]) for r in results} == {("row_attention", "reference")}
