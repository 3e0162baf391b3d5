"""`train.deterministic=true`: the same run twice gives the same bits (without it, index and
scatter ops sum in a thread-dependent order: ~1e-7 apart from the second step), and a resume
takes back the thread count the run used (it is part of the CPU's sums)."""

from __future__ import annotations

import shutil

import pytest
import torch

from geomim import train as train_cli
from geomim.training.metrics import read_metrics

RUN = [
    "--config", "tiny_synthetic", "data.source=rig", "data.rig_samples=4", "data.workers=0",
    "train.max_steps=4", "train.deterministic=true", "log.every=1", "log.progress=false",
    "log.tensorboard=false", "checkpoint.every=2",
]  # fmt: skip


def deterministic_run(run_dir, *extra: str) -> tuple[list[dict], bytes]:
    train_cli.main([*RUN, f"run_dir={run_dir}", *extra])
    records = [{k: v for k, v in r.items() if "per_s" not in k} for r in read_metrics(run_dir)]
    weights = (run_dir / "checkpoints" / "step-00000004" / "model.safetensors").read_bytes()
    return records, weights


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """A deterministic 4-step run on 2 threads (checkpoints after steps 2 and 4)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run_dir = tmp_path_factory.mktemp("uninterrupted")
        return run_dir, deterministic_run(run_dir)
    finally:
        torch.set_num_threads(previous)


def test_two_deterministic_runs_are_bit_identical_and_the_setting_is_restored(
    uninterrupted, tmp_path
):
    torch.set_num_threads(2)  # the autouse fixture restores its own setting afterwards
    assert not torch.are_deterministic_algorithms_enabled()  # back as it was
    second = deterministic_run(tmp_path / "second")
    first = uninterrupted[1]
    assert len(first[0]) == 4 and first[0] == second[0]
    assert first[1] == second[1]


def resume_at_step_2(uninterrupted, run_dir, *extra: str) -> tuple[list[dict], bytes]:
    """The uninterrupted run's folder cut back to step 2, resumed on 1 thread."""
    shutil.copytree(uninterrupted[0], run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "step-00000004")
    torch.set_num_threads(1)
    return deterministic_run(run_dir, "--resume", "auto", *extra)


def test_a_resume_takes_back_the_thread_count_and_ends_bit_identical(
    uninterrupted, tmp_path, capsys
):
    resumed = resume_at_step_2(uninterrupted, tmp_path / "run")
    assert "note: 2 CPU threads, as the run used (this process had 1)" in capsys.readouterr().out
    assert torch.get_num_threads() == 1  # the run's setting ended with it
    assert resumed == uninterrupted[1]


def test_train_threads_overrides_the_recorded_count_and_changes_the_bits(
    uninterrupted, tmp_path, capsys
):
    resumed = resume_at_step_2(uninterrupted, tmp_path / "run", "train.threads=1")
    assert "the run used 2 CPU threads, train.threads sets 1" in capsys.readouterr().out
    assert resumed[0][:2] == uninterrupted[1][0][:2]  # the steps before the resume
    assert resumed[1] != uninterrupted[1][1]  # the thread count is part of the arithmetic
