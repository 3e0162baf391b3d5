"""Helpers for the training tests: a tiny synthetic dataset, a tiny config, runs in subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from geomim import train as train_cli
from geomim.data.synthetic import generate
from geomim.training.config import CONFIG_DIR
from geomim.training.metrics import read_metrics

REPO = Path(__file__).resolve().parents[2]
INTERRUPT = Path(__file__).with_name("interrupt.py")
CAMERAS = ["CAM_FRONT", "CAM_FRONT_RIGHT"]
STEPS = 8  # 4 epochs of 2 steps: resuming crosses epoch boundaries
LOSS_KEYS = ("loss", "loss_reconstruction", "loss_depth", "grad_norm", "lr")


def make_dataset(root: Path) -> Path:
    """4 samples of 400 x 225 images and a 16-beam LiDAR (generated in ~1 s)."""
    return generate(
        root, scenes=1, samples_per_scene=4, sweeps_per_sample=0, width=400, height=225,
        beams=16, progress=False,
    )  # fmt: skip


def tiny_config(data_root: Path, run_dir: Path, **sections: dict) -> dict:
    """The shipped tiny config cut to 2 cameras and 8 steps of a global batch of 2, every step
    logged, a checkpoint every 2 steps; `sections` update its sections."""
    config = {
        "run_dir": str(run_dir),
        "model": {"num_views": 2, "view_transform": {"num_views": 2}},
        "data": {
            "root": str(data_root),
            "cameras": CAMERAS,
            "workers": 0,
        },
        "train": {"max_steps": STEPS, "batch_size": 2, "micro_batch": 1},
        "log": {"every": 1, "panel_every": 4, "progress": False, "tensorboard": False},
        "checkpoint": {"every": 2, "keep_last": 2},
    }
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values}
    return config


def write_config(path: Path, config: dict) -> Path:
    """Write a config dict as YAML (on top of the shipped tiny config's values)."""
    base = yaml.safe_load((CONFIG_DIR / "tiny_synthetic.yaml").read_text())
    merged = _merge(base, config)
    path.write_text(yaml.safe_dump(merged))
    return path


def run(args: list[str], nproc: int = 1, script: Path | None = None, check: bool = True):
    """`python -m geomim.train ARGS` (or `script ARGS`), under torchrun when nproc > 1; one
    thread per process so that runs on 1 and 2 ranks do the same arithmetic."""
    command = _command(nproc, script)
    result = subprocess.run(
        [*command, *args], env=_env(), cwd=REPO, capture_output=True, text=True, timeout=300
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command + args)} failed ({result.returncode}):\n{result.stderr[-4000:]}"
        )
    return result


def refused(capsys, *argv: str) -> str:
    """Run `python -m geomim.train ARGV` in this process, expect exit status 2, return stderr."""
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main(list(argv))
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def losses(run_dir: Path) -> list[dict]:
    """A run's logged losses, gradient norms and learning rates, step by step."""
    return [{k: r[k] for k in ("step", *LOSS_KEYS)} for r in read_metrics(run_dir)]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` and the bytes of its files (None for folders)."""
    return {
        str(path.relative_to(folder)): path.read_bytes() if path.is_file() else None
        for path in sorted(folder.rglob("*"))
    }


def start(args: list[str], script: Path | None = None) -> subprocess.Popen:
    """`python -m geomim.train ARGS` (or `script ARGS`) started in the background, as `run` runs
    it (output captured as text)."""
    return subprocess.Popen(
        [*_command(1, script), *args],
        env=_env(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}


def _command(nproc: int, script: Path | None) -> list[str]:
    target = [str(script)] if script else ["-m", "geomim.train"]
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return launcher + target


def _merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged
