"""Runs in a child process stopped by a real signal: SIGKILL half-way through deleting a
checkpoint or between a write and its rename (audit hooks pick the moment), SIGINT as a terminal
sends it, SIGTERM as a scheduler does; what each leaves and what the next start makes of it."""

from __future__ import annotations

import re
import shlex
import signal
import time
from pathlib import Path

from geomim import train as train_cli
from geomim.training.checkpointing import checkpoint_dir, checkpoint_problem, list_checkpoints
from geomim.training.config import load_config
from geomim.training.metrics import read_metrics
from tests.training.runs import (
    INTERRUPT,
    STEPS,
    losses,
    run,
    start,
    tiny_config,
    write_config,
)

STOP_LINE = re.compile(
    r"^stopped by (SIG\w+) after step (\d+); last checkpoint (\S+); resume with: (.+)$", re.M
)


def test_a_kill_mid_prune_leaves_exactly_the_kept_checkpoint_and_the_next_start_clears_the_rest(
    tmp_path, synthetic_root
):
    settings = tiny_config(
        synthetic_root,
        tmp_path / "run",
        train={"max_steps": 2},
        checkpoint={"every": 1, "keep_last": 1},
    )
    config = write_config(tmp_path / "config.yaml", settings)
    # checkpoint 2 prunes checkpoint 1: killed after deleting one of its three files
    killed = run(["prune", "2", "--config", str(config)], script=INTERRUPT, check=False)
    assert killed.returncode == -signal.SIGKILL
    run_dir = tmp_path / "run"
    assert list_checkpoints(run_dir) == [checkpoint_dir(run_dir, 2)]  # keep_last 1
    assert checkpoint_problem(checkpoint_dir(run_dir, 2)) is None
    train_cli.main(["--config", str(config), "--resume", "auto"])  # nothing left to train
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-00000002"]


def test_a_kill_between_write_and_rename_leaves_a_temporary_file_the_next_start_clears(
    tmp_path, synthetic_root
):
    settings = tiny_config(synthetic_root, tmp_path / "run", train={"max_steps": 1})
    config = write_config(tmp_path / "config.yaml", settings)
    killed = run(["replace", "config.yaml", "--config", str(config)], script=INTERRUPT, check=False)
    assert killed.returncode == -signal.SIGKILL
    run_dir = tmp_path / "run"
    [left] = run_dir.glob(".config.yaml.*.tmp")
    train_cli.main(["--config", str(config), "--resume", "auto"])
    assert not left.exists() and not list(run_dir.rglob("*.tmp"))
    assert load_config(run_dir / "config.yaml") == load_config(config)


def test_ctrl_c_as_an_epoch_ends_with_loader_workers_stops_the_run_with_one_line(
    tmp_path, synthetic_root
):
    settings = tiny_config(synthetic_root, tmp_path / "run", data={"workers": 2})
    config = write_config(tmp_path / "config.yaml", settings)
    # SIGINT to the whole process group (workers too) as the first epoch's loader shuts down
    stopped = run(["ctrl-c", "1", "--config", str(config)], script=INTERRUPT, check=False)
    output = stopped.stdout + stopped.stderr
    assert stopped.returncode == 130, output[-3000:]
    assert "Traceback" not in output and "Exception ignored" not in output
    [(name, step, checkpoint, command)] = STOP_LINE.findall(output)
    run_dir = tmp_path / "run"
    assert (name, step, checkpoint) == ("SIGINT", "2", str(checkpoint_dir(run_dir, 2)))
    assert shlex.split(command) == [
        "python", "-m", "geomim.train", "--config", str(run_dir / "config.yaml"), "--resume",
        "auto",
    ]  # fmt: skip
    assert checkpoint_problem(checkpoint) is None
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2]


def test_sigterm_stops_after_the_step_with_a_checkpoint_the_printed_command_resumes(
    tmp_path, synthetic_root, reference_run
):
    # no checkpoint on the way: the one the stop writes is the only one
    settings = tiny_config(synthetic_root, tmp_path / "run", checkpoint={"every": 1000})
    config = write_config(tmp_path / "config.yaml", settings)
    run_dir = tmp_path / "run"
    child = start(["--config", str(config)])
    deadline = time.monotonic() + 240
    while not read_metrics(run_dir) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=240)
    assert child.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err
    [(name, step, checkpoint, command)] = STOP_LINE.findall(err)
    assert name == "SIGTERM" and 1 <= int(step) < STEPS
    assert Path(checkpoint) == checkpoint_dir(run_dir, int(step))
    assert list_checkpoints(run_dir) == [Path(checkpoint)]
    assert checkpoint_problem(checkpoint) is None
    python, *args = shlex.split(command)
    assert python == "python" and args[:2] == ["-m", "geomim.train"]
    train_cli.main(args[2:])  # what the line says (in this process, also on one thread)
    assert losses(run_dir) == losses(reference_run)  # exactly


def test_a_second_sigint_exits_at_once_without_a_checkpoint(tmp_path, synthetic_root):
    config = write_config(tmp_path / "config.yaml", tiny_config(synthetic_root, tmp_path / "run"))
    stopped = run(["sigint-twice", "1", "--config", str(config)], script=INTERRUPT, check=False)
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert "SIGINT again: exiting at once, no checkpoint written" in stopped.stderr
    assert "Traceback" not in stopped.stderr and not STOP_LINE.search(stopped.stderr)
    assert list_checkpoints(tmp_path / "run") == []  # step 1 done, its checkpoint would be 2
