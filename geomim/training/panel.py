"""A PNG panel of what the pretrainer sees and predicts, for one sample of a training batch.

    cameras           | the N augmented camera images
    predicted depth   | expected depth of the depth head, per camera (stride-16 cells)
    LiDAR depth       | the depth target: nearest LiDAR point per cell (black: no point)
    BEV               | predicted map | teacher map (first 3 principal components of the teacher's
                        channels as RGB, the same projection for both; forward up, left left)

Composed with numpy and PIL only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageDraw
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor

from geomim.checkpoints import write_atomic

if TYPE_CHECKING:
    from geomim.data.batch import MultiViewBatch
    from geomim.pretrain.model import PretrainOutput
    from geomim.training.config import TrainConfig

PANELS = "panels"  # the folder of a run that holds them
TILE_HEIGHT = 128  # camera tiles are scaled to this height
BEV_SIZE = 384
LABEL_HEIGHT = 16
GAP = 4
BACKGROUND = (24, 24, 24)
TEXT = (235, 235, 235)
EMPTY = (0, 0, 0)
# a perceptually ordered ramp (dark blue -> teal -> yellow), for depth: near = dark
_RAMP = np.array(
    [[48, 18, 59], [70, 107, 227], [27, 207, 212], [97, 252, 108], [210, 233, 53], [254, 155, 45]],
    dtype=np.float64,
)


def colorize(values: np.ndarray, low: float, high: float, valid: np.ndarray | None = None):
    """(H, W) values -> (H, W, 3) uint8 on the ramp from `low` to `high`; invalid cells black."""
    scaled = np.clip((values - low) / max(high - low, 1e-12), 0, 1) * (len(_RAMP) - 1)
    anchors = np.arange(len(_RAMP))
    rgb = np.stack([np.interp(scaled, anchors, _RAMP[:, c]) for c in range(3)], axis=-1)
    if valid is not None:
        rgb[~valid] = EMPTY
    return rgb.astype(np.uint8)


def camera_images(images: Tensor) -> list[np.ndarray]:
    """(N, 3, H, W) ImageNet-normalised images -> N (H, W, 3) uint8 arrays."""
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN, device=images.device)[:, None, None]
    std = torch.tensor(IMAGENET_DEFAULT_STD, device=images.device)[:, None, None]
    pixels = ((images.float() * std + mean).clamp(0, 1) * 255).round().byte()
    return list(pixels.permute(0, 2, 3, 1).cpu().numpy())


def expected_depth(probabilities: Tensor, dbound: tuple[float, float, float]) -> Tensor:
    """(N, bins, h, w) depth probabilities -> (N, h, w) expected depth at the bin centres."""
    start, _, step = dbound
    bins = probabilities.shape[1]
    centres = start + step * (torch.arange(bins, device=probabilities.device) + 0.5)
    weights = probabilities.float()
    return (weights * centres[:, None, None]).sum(1) / weights.sum(1).clamp(min=1e-12)


def lidar_depth(depth_maps: Tensor, stride: int) -> Tensor:
    """(N, H, W) sparse depth maps -> (N, h, w) nearest point per stride block (0 = none)."""
    views, height, width = depth_maps.shape
    blocks = depth_maps.float().view(views, height // stride, stride, width // stride, stride)
    nearest = torch.where(blocks > 0, blocks, torch.inf).amin(dim=(2, 4))
    return torch.where(torch.isfinite(nearest), nearest, 0)


def bev_rgb(prediction: Tensor, teacher: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(C, X, Y) maps -> two (X, Y, 3) uint8 images: both projected on the teacher's first three
    principal components and scaled by the teacher's 1st-99th percentiles; forward (x) up."""
    channels = teacher.shape[0]
    flat_teacher = teacher.float().flatten(1).T  # (X*Y, C)
    flat_prediction = prediction.float().flatten(1).T
    mean = flat_teacher.mean(0)
    _, _, directions = torch.linalg.svd(flat_teacher - mean, full_matrices=False)
    basis = directions[: min(3, channels)].T  # (C, <=3)
    images = []
    projected_teacher = (flat_teacher - mean) @ basis
    low = torch.quantile(projected_teacher, 0.01, dim=0)
    high = torch.quantile(projected_teacher, 0.99, dim=0)
    for flat in (flat_prediction, flat_teacher):
        projected = ((flat - mean) @ basis - low) / (high - low).clamp(min=1e-6)
        rgb = torch.zeros(flat.shape[0], 3)
        rgb[:, : basis.shape[1]] = projected.clamp(0, 1).cpu()
        image = rgb.view(*teacher.shape[1:], 3).numpy()
        images.append((np.flip(image, axis=(0, 1)) * 255).round().astype(np.uint8))
    return images[0], images[1]


def training_panel(
    images: Tensor,
    depth_probabilities: Tensor,
    depth_maps: Tensor,
    prediction: Tensor,
    teacher: Tensor,
    dbound: tuple[float, float, float],
    stride: int,
    title: str = "",
) -> Image.Image:
    """The panel of one sample: images (N, 3, H, W), depth probabilities (N, bins, h, w), LiDAR
    depth maps (N, H, W), predicted and teacher BEV maps (C, X, Y)."""
    start, stop, _ = dbound
    predicted = expected_depth(depth_probabilities.detach(), dbound).cpu().numpy()
    target = lidar_depth(depth_maps.detach(), stride).cpu().numpy()
    rows = [
        ("cameras", camera_images(images.detach()), Image.BILINEAR),
        ("predicted depth", [colorize(d, start, stop) for d in predicted], Image.NEAREST),
        (
            f"LiDAR depth ({start:g}-{stop:g} m; black: no point)",
            [colorize(d, start, stop, valid=d > 0) for d in target],
            Image.NEAREST,
        ),
    ]
    height, width = images.shape[-2:]
    tile = (round(TILE_HEIGHT * width / height), TILE_HEIGHT)
    views = images.shape[0]
    bev_prediction, bev_teacher = bev_rgb(prediction.detach(), teacher.detach())
    canvas_width = max(views * (tile[0] + GAP) - GAP, 2 * BEV_SIZE + GAP)
    canvas_height = LABEL_HEIGHT + len(rows) * (LABEL_HEIGHT + tile[1] + GAP)
    canvas_height += LABEL_HEIGHT + BEV_SIZE
    canvas = Image.new("RGB", (canvas_width, canvas_height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((2, 2), title, fill=TEXT)
    top = LABEL_HEIGHT
    for label, arrays, resample in rows:
        draw.text((2, top + 2), label, fill=TEXT)
        top += LABEL_HEIGHT
        for i, array in enumerate(arrays):
            picture = Image.fromarray(np.ascontiguousarray(array)).resize(tile, resample)
            canvas.paste(picture, (i * (tile[0] + GAP), top))
        top += tile[1] + GAP
    draw.text((2, top + 2), "predicted BEV", fill=TEXT)
    draw.text(
        (BEV_SIZE + GAP + 2, top + 2), "teacher BEV (the target, patch-normalised)", fill=TEXT
    )
    top += LABEL_HEIGHT
    for i, array in enumerate((bev_prediction, bev_teacher)):
        picture = Image.fromarray(np.ascontiguousarray(array)).resize(
            (BEV_SIZE, BEV_SIZE), Image.NEAREST
        )
        canvas.paste(picture, (i * (BEV_SIZE + GAP), top))
    return canvas


def write_step_panel(
    run_dir: Path,
    step: int,
    batch: MultiViewBatch,
    output: PretrainOutput,
    losses: dict[str, float],
    config: TrainConfig,
) -> Path:
    """`panels/step-N.png` in the run folder: sample 0 of a micro-batch, first mask group."""
    prediction = output.predictions[0]
    image = training_panel(
        batch.images[0],
        prediction.depth[: config.model.num_views],
        batch.depth_maps[0],
        prediction.prediction[0],
        output.teacher[0],
        config.model.view_transform.dbound,
        config.model.view_transform.stride,
        title=f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in losses.items()),
    )
    path = Path(run_dir) / PANELS / f"step-{step:08d}.png"
    write_atomic(path, lambda temp: image.save(temp, format="PNG"))
    return path
