"""Shared fixtures: one tiny synthetic dataset, one single-process reference run, copies of it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from geomim.training import distributed, engine
from tests.training.runs import make_dataset, run, tiny_config, write_config


@pytest.fixture(autouse=True)
def one_thread():
    """Runs in this process on one thread, as those in subprocesses (`runs.run`): on a busy
    2-core machine, a process's threads wait on each other far longer than they compute."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A 4-sample synthetic nuScenes dataset, shared by every training test."""
    return make_dataset(tmp_path_factory.mktemp("synthetic-nuscenes"))


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, synthetic_root) -> Path:
    """8 steps on one process (global batch 2 = 2 accumulated micro-batches of 1)."""
    folder = tmp_path_factory.mktemp("reference")
    config = write_config(folder / "config.yaml", tiny_config(synthetic_root, folder / "run"))
    run(["--config", str(config)])
    return folder / "run"


@pytest.fixture
def earlier_run(tmp_path, synthetic_root, reference_run) -> tuple[Path, Path]:
    """A copy of the reference run (checkpoints 6 and 8, metrics of steps 1-8, panels 4 and 8)
    and the config that continues it: (run folder, config file)."""
    run_dir = tmp_path / "run"
    shutil.copytree(reference_run, run_dir)
    config = write_config(tmp_path / "config.yaml", tiny_config(synthetic_root, run_dir))
    return run_dir, config


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if start-up gets as far as the process group or the training loop."""

    def refuse(*args, **kwargs):
        raise AssertionError("work started despite a bad config")

    monkeypatch.setattr(distributed, "init_distributed", refuse)
    monkeypatch.setattr(engine, "train", refuse)
