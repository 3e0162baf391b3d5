"""Checkpoints: atomic folders, the last k kept, deletions out of sight first, broken files named,
RNG states restored, full and sharded reads."""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from geomim.training.checkpointing import (
    capture_rng,
    checkpoint_dir,
    checkpoint_problem,
    clear_partial_checkpoints,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    read_model_weights,
    read_train_state,
    restore_rng,
    save_checkpoint,
    step_folders,
)
from geomim.training.distributed import DistributedContext

CONTEXT = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


class WithTeacher(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(3, 2)
        self.teacher = nn.Linear(2, 2).requires_grad_(False)


def trained(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = WithTeacher()
    optimizer = torch.optim.AdamW(model.net.parameters(), lr=0.1)
    model.net(torch.randn(4, 3)).square().mean().backward()
    optimizer.step()
    return model, optimizer


def save(tmp_path, step: int, model, optimizer, keep_last: int = 2):
    extra = {"progress": {"step": step}, "scheduler": {}, "scaler": {}}
    return save_checkpoint(tmp_path, step, model, optimizer, extra, CONTEXT, False, keep_last)


def test_checkpoint_restores_model_and_optimizer_without_the_teacher(tmp_path):
    model, optimizer = trained(seed=0)
    path = save(tmp_path, 3, model, optimizer)
    assert path == checkpoint_dir(tmp_path, 3) and latest_checkpoint(tmp_path) == path
    fresh, fresh_optimizer = trained(seed=1)
    teacher_before = fresh.teacher.weight.clone()
    state = load_checkpoint(path, fresh, fresh_optimizer)
    assert state["progress"] == {"step": 3}
    assert torch.equal(fresh.net.weight, model.net.weight)
    assert torch.equal(fresh.teacher.weight, teacher_before)  # not saved, not touched
    exp_avg = optimizer.state[model.net.weight]["exp_avg"]
    assert torch.equal(fresh_optimizer.state[fresh.net.weight]["exp_avg"], exp_avg)
    weights = read_model_weights(path, {"net.bias": torch.zeros(2)})
    assert torch.equal(weights["net.bias"], model.net.bias)


def test_only_the_last_k_checkpoints_are_kept(tmp_path):
    model, optimizer = trained()
    for step in (2, 4, 6):
        save(tmp_path, step, model, optimizer, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000004", "step-00000006"]


def test_an_interrupted_save_is_invisible_and_cleared(tmp_path):
    model, optimizer = trained()
    save(tmp_path, 2, model, optimizer)
    partial = checkpoint_dir(tmp_path, 4).with_name(".step-00000004.tmp")
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    incomplete = checkpoint_dir(tmp_path, 6)  # a folder without its train_state
    incomplete.mkdir()
    assert latest_checkpoint(tmp_path) == checkpoint_dir(tmp_path, 2)
    assert clear_partial_checkpoints(tmp_path) == [partial]
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        read_train_state(incomplete)


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    torch.save(capture_rng(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(2)
    np.random.seed(2)
    torch.manual_seed(2)
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def test_checkpoint_problem_names_the_missing_empty_or_truncated_file(tmp_path):
    model, optimizer = trained()
    path = save(tmp_path, 2, model, optimizer)
    assert checkpoint_problem(path) is None
    optimizer_file = path / "optimizer.pt"
    data = optimizer_file.read_bytes()
    optimizer_file.write_bytes(data[: len(data) // 2])
    assert checkpoint_problem(path).startswith(f"{optimizer_file} is truncated or corrupt")
    (path / "model.safetensors").unlink()
    assert checkpoint_problem(path) == f"{path / 'model.safetensors'} is missing"
    (path / "train_state.pt").write_bytes(b"")
    assert checkpoint_problem(path) == f"{path / 'train_state.pt'} is empty"
    (path / "train_state.pt").unlink()
    assert checkpoint_problem(path) == f"{path / 'train_state.pt'} is missing"


def test_checkpoint_problem_reads_the_shard_sizes_of_a_distributed_checkpoint(tmp_path):
    model, optimizer = trained()
    extra = {"progress": {"step": 2}, "scheduler": {}, "scaler": {}}
    with warnings.catch_warnings():  # one process without a process group
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        path = save_checkpoint(tmp_path, 2, model, optimizer, extra, CONTEXT, True, 2)
    assert checkpoint_problem(path) is None
    [shard] = path.glob("*.distcp")
    shard.write_bytes(shard.read_bytes()[:10])
    assert checkpoint_problem(path).startswith(f"{shard} is truncated (10 of ")


def test_deletions_go_through_a_hidden_folder_and_prune_older_incomplete_folders(tmp_path):
    model, optimizer = trained()
    save(tmp_path, 2, model, optimizer)
    (checkpoint_dir(tmp_path, 2) / "train_state.pt").unlink()  # a delete killed by old code
    aside = checkpoint_dir(tmp_path, 3).with_name(".deleting-step-00000003")
    aside.mkdir()  # a delete killed after its rename: out of sight
    (aside / "model.safetensors").write_bytes(b"half")
    for step in (4, 6):
        save(tmp_path, step, model, optimizer, keep_last=1)
    assert [p.name for p in step_folders(tmp_path)] == ["step-00000006"]
    assert latest_checkpoint(tmp_path) == checkpoint_dir(tmp_path, 6)
    assert clear_partial_checkpoints(tmp_path) == [aside]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000006"]
