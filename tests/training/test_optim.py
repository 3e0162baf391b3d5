"""The recipe's schedule: linear warm-up from lr / 3, cosine down to 1e-3 x lr."""

from __future__ import annotations

import pytest
import torch

from geomim.training.config import OptimConfig
from geomim.training.optim import build_optimizer, build_scheduler, lr_factor


def test_warm_up_starts_at_a_third_and_reaches_the_cosine():
    config = OptimConfig()
    assert lr_factor(0, 10_000, config) == pytest.approx(1 / 3)
    no_warmup = OptimConfig(warmup_steps=0)
    assert lr_factor(250, 10_000, config) == pytest.approx(
        2 / 3 * lr_factor(250, 10_000, no_warmup)
    )
    assert lr_factor(500, 10_000, config) == lr_factor(500, 10_000, no_warmup)


def test_cosine_ends_at_the_final_factor_and_is_halfway_in_the_middle():
    config = OptimConfig(warmup_steps=0)
    assert lr_factor(10_000, 10_000, config) == pytest.approx(1e-3)
    assert lr_factor(5_000, 10_000, config) == pytest.approx((1 + 1e-3) / 2)


def test_scheduler_steps_the_optimizer_lr():
    model = torch.nn.Linear(2, 2)
    optimizer = build_optimizer(model, OptimConfig(lr=2e-4))
    scheduler = build_scheduler(optimizer, 100, OptimConfig(lr=2e-4, warmup_steps=10))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(2e-4 / 3)
    assert optimizer.param_groups[0]["weight_decay"] == 0.01
    for _ in range(100):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(2e-7)
