"""Shared fixtures: one tiny synthetic dataset and one single-process reference run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.training.runs import make_dataset, run, tiny_config, write_config


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
