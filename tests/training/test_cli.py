"""`python -m geomim.train`: bad configs stop at start-up, before any work; a run's outputs."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from geomim import train as train_cli
from geomim.training.config import ConfigError, load_config
from geomim.training.metrics import read_metrics
from tests.training.runs import refused, tiny_config, write_config


@pytest.fixture
def config_file(tmp_path, synthetic_root):
    return write_config(tmp_path / "config.yaml", tiny_config(synthetic_root, tmp_path / "run"))


def test_unknown_key_in_the_file_stops_start_up(tmp_path, capsys, no_work, config_file):
    data = yaml.safe_load(config_file.read_text())
    data["train"]["batchsize"] = 4
    config_file.write_text(yaml.safe_dump(data))
    error = refused(capsys, "--config", str(config_file))
    assert "unknown key 'train.batchsize'" in error and "did you mean 'batch_size'" in error
    assert not (tmp_path / "run").exists()


def test_wrong_type_in_an_override_stops_start_up(tmp_path, capsys, no_work, config_file):
    error = refused(capsys, "--config", str(config_file), "train.epochs=ten")
    assert "train.epochs: expected int, got str 'ten'" in error
    assert not (tmp_path / "run").exists()


def test_a_batch_that_does_not_split_over_the_ranks_stops_start_up(
    tmp_path, capsys, monkeypatch, no_work, config_file
):
    monkeypatch.setenv("WORLD_SIZE", "3")  # as torchrun --nproc_per_node=3 sets it
    error = refused(capsys, "--config", str(config_file))
    assert "train.batch_size 2 does not split over 3 rank(s) x train.micro_batch 1" in error
    assert not (tmp_path / "run").exists()


def test_a_missing_dataset_stops_start_up(tmp_path, capsys, no_work, config_file):
    error = refused(capsys, "--config", str(config_file), f"data.root={tmp_path / 'nowhere'}")
    assert f"data.root: no dataset folder at {tmp_path / 'nowhere'}" in error
    error = refused(capsys, "--config", str(config_file), "data.version=v1.0-trainval")
    assert "has no v1.0-trainval/ tables folder (found ['v1.0-mini'])" in error
    assert not (tmp_path / "run").exists()


def test_a_run_folder_with_checkpoints_needs_resume_or_fresh(
    tmp_path, capsys, no_work, config_file
):
    (tmp_path / "run" / "checkpoints" / "step-00000002").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "step-00000002" / "train_state.pt").write_bytes(b"")
    error = refused(capsys, "--config", str(config_file))
    assert f"run_dir: {tmp_path / 'run'} already holds a run (checkpoints/step-00000002)" in error
    assert "pass --resume auto to continue it, --fresh to discard it and start over" in error
    error = refused(capsys, "--config", str(config_file), "--resume", str(tmp_path))
    assert f"--resume {tmp_path}: not a complete checkpoint: {tmp_path}/train_state.pt is" in error
    error = refused(capsys, "--config", str(config_file), "--resume", "auto", "--fresh")
    assert "--fresh: not allowed with argument --resume" in error


def test_a_run_dir_that_is_a_file_stops_start_up(tmp_path, capsys, no_work, config_file):
    (tmp_path / "file").write_text("")
    error = refused(capsys, "--config", str(config_file), f"run_dir={tmp_path / 'file'}")
    assert error.splitlines()[-1].endswith(f"run_dir: {tmp_path / 'file'} is a file, not a folder")
    error = refused(capsys, "--config", str(config_file), f"run_dir={tmp_path / 'file' / 'run'}")
    assert f"run_dir: {tmp_path / 'file' / 'run'} cannot be made: {tmp_path / 'file'} is a" in error
    assert "Traceback" not in error


def test_debug_raises_a_start_up_error_with_its_traceback(capsys, no_work, config_file):
    with pytest.raises(ConfigError, match=r"train\.epochs: expected int"):
        train_cli.main(["--config", str(config_file), "--debug", "train.epochs=ten"])


def test_print_config_shows_the_resolved_config(capsys, config_file):
    train_cli.main(["--config", str(config_file), "--print-config", "optim.lr=0.5"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["optim"]["lr"] == 0.5
    assert printed["teacher"]["kind"] == "histogram"


def test_bf16_checkpointed_accumulating_run_writes_config_metrics_panel_and_checkpoint(
    tmp_path, synthetic_root, capsys
):
    settings = tiny_config(
        synthetic_root,
        tmp_path / "run",
        train={"max_steps": 2, "precision": "bf16"},
        model={"grad_checkpointing": True},
        log={"every": 1, "panel_every": 2, "progress": True, "tensorboard": True},
    )
    config_file = write_config(tmp_path / "config.yaml", settings)
    train_cli.main(["--config", str(config_file)])
    run_dir = tmp_path / "run"
    assert capsys.readouterr().out.splitlines()[-4:] == [  # after the progress bar, where it is
        f"run         {run_dir}",
        f"checkpoint  {run_dir / 'checkpoints' / 'step-00000002'}",
        f"metrics     {run_dir / 'metrics.jsonl'}",
        f"panel       {run_dir / 'panels' / 'step-00000002.png'}",
    ]
    assert load_config(run_dir / "config.yaml") == load_config(config_file)
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == [1, 2]
    assert all(math.isfinite(r["loss"]) and r["steps_per_s"] > 0 for r in records)
    assert json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])["epoch"] == 0.5
    panel = Image.open(run_dir / "panels" / "step-00000002.png")
    assert panel.width > 2 * 128 and panel.height > 3 * 128
    assert (run_dir / "checkpoints" / "step-00000002" / "model.safetensors").is_file()
    board = EventAccumulator(str(run_dir / "tensorboard"))
    board.Reload()
    for name in ("loss", "loss_reconstruction", "loss_depth", "lr"):
        logged = [(event.step, event.value) for event in board.Scalars(name)]
        expected = [(r["step"], pytest.approx(r[name], rel=1e-6)) for r in records]
        assert logged == expected, name
