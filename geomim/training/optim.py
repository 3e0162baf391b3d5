"""AdamW and the recipe's learning-rate schedule: linear warm-up, then cosine annealing."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from geomim.training.config import OptimConfig


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.AdamW:
    """AdamW over every trainable parameter, weight decay on all of them (as the official
    mmcv optimizer without a `paramwise_cfg`)."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(
        parameters, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
    )


def lr_factor(step: int, total_steps: int, config: OptimConfig) -> float:
    """The multiple of the base lr at `step` (0-based): cosine from 1 to `final_lr_factor` over
    the run, scaled during warm-up by a ramp from `warmup_start_factor` to 1 (mmcv's linear
    warm-up, which ramps the regular schedule's lr)."""
    progress = min(step / max(1, total_steps), 1.0)
    final = config.final_lr_factor
    cosine = final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))
    if step < config.warmup_steps:
        start = config.warmup_start_factor
        cosine *= 1 - (1 - step / config.warmup_steps) * (1 - start)
    return cosine


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, config: OptimConfig
) -> LambdaLR:
    """Per-step schedule: call `step()` after every optimizer step."""
    return LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, config))
