"""`train.deterministic=true`: the same run twice gives the same bits on 2 threads (without it,
index and scatter ops sum in a thread-dependent order: ~1e-7 apart from the second step)."""

from __future__ import annotations

import torch

from geomim import train as train_cli
from geomim.training.metrics import read_metrics


def deterministic_run(run_dir) -> tuple[list[dict], bytes]:
    train_cli.main([
        "--config", "tiny_synthetic", "data.source=rig", "data.rig_samples=4", "data.workers=0",
        "train.max_steps=4", "train.deterministic=true", "log.every=1", "log.progress=false",
        "log.tensorboard=false", f"run_dir={run_dir}",
    ])  # fmt: skip
    records = [{k: v for k, v in r.items() if "per_s" not in k} for r in read_metrics(run_dir)]
    weights = (run_dir / "checkpoints" / "step-00000004" / "model.safetensors").read_bytes()
    return records, weights


def test_two_deterministic_runs_are_bit_identical_and_the_setting_is_restored(tmp_path):
    torch.set_num_threads(2)  # the autouse fixture restores its own setting afterwards
    first = deterministic_run(tmp_path / "first")
    assert not torch.are_deterministic_algorithms_enabled()  # back as it was
    second = deterministic_run(tmp_path / "second")
    assert len(first[0]) == 4 and first[0] == second[0]
    assert first[1] == second[1]
