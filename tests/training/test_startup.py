"""Where a run starts: `--resume auto` over broken checkpoints, refusals that leave an earlier run
as it was, `--fresh`; a checkpoint that does not load changes nothing either."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from geomim import train as train_cli
from geomim.training.checkpointing import checkpoint_problem, list_checkpoints
from geomim.training.metrics import read_metrics
from tests.training.runs import refused, snapshot


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def empty(path: Path) -> None:
    path.write_bytes(b"")


@pytest.mark.parametrize(
    ("broken", "damage", "problem"),
    [
        ("model.safetensors", truncate, "is truncated or corrupt (SafetensorError"),
        ("train_state.pt", empty, "is empty"),
    ],
)
def test_resume_auto_passes_over_a_broken_newest_checkpoint_and_says_which(
    earlier_run, capsys, broken, damage, problem
):
    run_dir, config = earlier_run
    checkpoints = run_dir / "checkpoints"
    damage(checkpoints / "step-00000008" / broken)
    before = read_metrics(run_dir)
    train_cli.main(["--config", str(config), "--resume", "auto"])
    [line] = [line for line in capsys.readouterr().out.splitlines() if "passing over" in line]
    assert line.startswith(
        f"resume: passing over step-00000008 ({checkpoints / 'step-00000008' / broken} {problem}"
    )
    assert line.endswith(
        f"; resuming from {checkpoints / 'step-00000006'}, the newest complete checkpoint"
    )
    after = read_metrics(run_dir)
    assert [r["step"] for r in after] == list(range(1, 9)) and after[:6] == before[:6]
    assert [p.name for p in list_checkpoints(run_dir)] == ["step-00000006", "step-00000008"]
    assert checkpoint_problem(checkpoints / "step-00000008") is None  # redone


def _no_state_file(checkpoints: Path) -> list[str]:
    for step in (6, 8):
        (checkpoints / f"step-{step:08d}" / "train_state.pt").unlink()
    return [
        f"step-00000008 ({checkpoints}/step-00000008/train_state.pt is missing)",
        f"step-00000006 ({checkpoints}/step-00000006/train_state.pt is missing)",
    ]


def _truncated_and_empty(checkpoints: Path) -> list[str]:
    truncate(checkpoints / "step-00000008" / "optimizer.pt")
    empty(checkpoints / "step-00000006" / "train_state.pt")
    return [
        f"step-00000008 ({checkpoints}/step-00000008/optimizer.pt is truncated or corrupt",
        f"step-00000006 ({checkpoints}/step-00000006/train_state.pt is empty)",
    ]


def _metrics_only(checkpoints: Path) -> list[str]:
    shutil.rmtree(checkpoints)
    return ["no checkpoint was written"]


@pytest.mark.parametrize("damage", [_no_state_file, _truncated_and_empty, _metrics_only])
def test_resume_auto_without_a_complete_checkpoint_refuses_and_changes_nothing(
    earlier_run, capsys, no_work, damage
):
    run_dir, config = earlier_run
    problems = damage(run_dir / "checkpoints")
    before = snapshot(run_dir)
    error = refused(capsys, "--config", str(config), "--resume", "auto")
    assert f"--resume auto: {run_dir} holds an earlier run (" in error
    assert "8 records in metrics.jsonl) but no complete checkpoint to resume from" in error
    for problem in problems:
        assert problem in error
    assert "pass --fresh to discard that run and start over" in error
    assert snapshot(run_dir) == before


def test_a_checkpoint_that_does_not_load_stops_the_run_before_the_run_folder_changes(
    earlier_run, capsys
):
    run_dir, config = earlier_run
    (run_dir / "checkpoints" / ".step-00000010.tmp").mkdir()  # what a killed save leaves
    before = snapshot(run_dir)
    # one more geometry block: the checkpoints lack its weights
    error = refused(
        capsys, "--config", str(config), "--resume", "auto", "model.decoder.geometry_depth=3"
    )
    assert (
        f"--resume: {run_dir / 'checkpoints' / 'step-00000008'} does not load into this run"
        in error
    )
    assert "the run folder is unchanged" in error and "Traceback" not in error
    assert snapshot(run_dir) == before  # config.yaml and metrics.jsonl too


def test_fresh_discards_an_earlier_run_and_starts_over(earlier_run, capsys):
    run_dir, config = earlier_run
    truncate(run_dir / "checkpoints" / "step-00000008" / "model.safetensors")
    train_cli.main(["--config", str(config), "--fresh", "train.max_steps=2"])
    out = capsys.readouterr().out
    assert f"--fresh: discarded the earlier run in {run_dir} (checkpoints/step-00000006, " in out
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-00000002"]
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2]
    assert sorted(p.name for p in (run_dir / "panels").iterdir()) == ["step-00000002.png"]
