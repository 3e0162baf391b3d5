"""Fine-tune a camera-only BEV model on synthetic nuScenes: GeoMIM-pretrained vs random backbone.

    python examples/finetune_bev.py                          # pretrains the backbone first (tiny)
    python examples/finetune_bev.py --pretrained exported/   # a geomim.export folder,
    python examples/finetune_bev.py --pretrained model.safetensors   # our weights,
    python examples/finetune_bev.py --pretrained geomim_base.pth --model geomim_base  # official

The model is assembled from geomim's parts, as BEVDet / BEVDepth assemble theirs:

    images (B, 6, 3, H, W) ──GeoMIM backbone (timm, features_only)──> c4 (/16), c5 (/32)
    ──neck: c5 upsampled onto c4, concatenated, 2 convs──> features (B*6, D, H/16, W/16)
    ──camera-aware modulation (camera_vector + CameraModulation)──> geometry features
    ──DepthLSS: depth net on [geometry, features], Lift-Splat into a BEV grid, BEV convs──>
    ──1x1 head──> object-footprint logits (B, 1, 32, 32): 3.2 m cells over +-51.2 m

The task is BEV segmentation of the synthetic objects' footprints (boxes from the nuScenes
`sample_annotation` table), with the LiDAR depth supervision of BEVDepth. Both runs share the
data, the seed, the head's initialisation and every hyper-parameter (AdamW, lr 1e-3 with the
backbone at 0.1x, as BEVFormer-style recipes fine-tune image backbones); only the backbone's
starting weights differ. Without --pretrained, the backbone is first pretrained with `python -m
geomim.train` (the `tiny_synthetic` config) on the training scenes' images and LiDAR (no labels)
and exported with `python -m geomim.export`, as the paper pretrains on nuScenes train.

Prints both curves (training loss, validation IoU and loss) beside the IoU of a location prior
that sees no image (where objects usually are in the training masks), and writes
OUT/finetune_bev.png and OUT/curves.json. Needs `pip install "geomim[nuscenes]"` (the devkit
reads the tables).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from nuscenes.nuscenes import NuScenes
from safetensors import safe_open
from torch import Tensor, nn

import geomim  # noqa: F401  (registers the backbones with timm)
from geomim.data import NuScenesMultiView, collate_multiview
from geomim.data.batch import MultiViewBatch
from geomim.data.nuscenes import PointConfig
from geomim.data.synthetic import generate
from geomim.pretrain.camera import CameraModulation, camera_vector
from geomim.pretrain.losses import depth_loss, depth_target
from geomim.pretrain.view_transform import DepthLSS, ViewTransformConfig, ViewTransformOutput

WIDTH = 64  # neck and depth-net width
BOUND = (-51.2, 51.2, 1.6)  # Lift-Splat grid of 64 cells; the BEV convs halve it
CELLS = 32  # output grid: 3.2 m cells


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path("finetune-bev"), help="folder for data, runs, plot"
    )
    parser.add_argument(
        "--pretrained",
        type=Path,
        help="model.safetensors, an official .pth, or a geomim.export folder "
        "(default: pretrain one here first)",
    )
    parser.add_argument("--model", default="geomim_test", help="backbone (timm name)")
    parser.add_argument("--pretrain-steps", type=int, default=500, help="when pretraining here")
    parser.add_argument("--steps", type=int, default=200, help="fine-tuning steps per run")
    parser.add_argument("--eval-every", type=int, default=25, help="steps between val IoUs")
    parser.add_argument("--batch-size", type=int, default=2, help="samples per step")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (head)")
    parser.add_argument(
        "--backbone-lr-scale", type=float, default=0.1, help="backbone lr = lr x this"
    )
    parser.add_argument("--train-scenes", type=int, default=4, help="synthetic training scenes")
    parser.add_argument("--val-scenes", type=int, default=2, help="synthetic validation scenes")
    parser.add_argument("--samples-per-scene", type=int, default=8, help="key frames per scene")
    parser.add_argument(
        "--image-size", type=int, nargs=2, default=(64, 176), metavar=("H", "W"), help="input"
    )
    parser.add_argument("--seed", type=int, default=0, help="data, weights and sampling")
    return parser.parse_args()


# ----------------------------------------------------------------------------------- data
Sample = tuple[dict, Tensor]  # a NuScenesMultiView item and its (1, CELLS, CELLS) mask


def synthetic_split(root: Path, scenes: int, samples_per_scene: int, seed: int) -> Path:
    """A synthetic nuScenes-format dataset (written once; reused when present)."""
    if not (root / "v1.0-mini").is_dir():
        generate(
            root, scenes=scenes, samples_per_scene=samples_per_scene, sweeps_per_sample=0,
            seed=seed, width=400, height=225, beams=16, progress=False,
        )  # fmt: skip
    return root


def load_split(root: Path, image_size: tuple[int, int]) -> list[Sample]:
    """Every sample of `root` once, in the test-time view (so both runs see the same tensors),
    with its footprint mask from the annotations."""
    height, width = image_size
    dataset = NuScenesMultiView(
        root, "v1.0-mini", split=None, train=False, image_size=(width, height),
        points=PointConfig(sweeps=0, pad_empty_sweeps=False), cache_dir=None,
    )  # fmt: skip
    tables = NuScenes("v1.0-mini", str(root), verbose=False)
    samples = []
    for index in range(len(dataset)):
        item = dataset[index]
        lidar = tables.get("sample", item["token"])["data"]["LIDAR_TOP"]
        _, boxes, _ = tables.get_sample_data(lidar)  # boxes in the LiDAR frame
        samples.append((item, footprint_mask(boxes, item["lidar_aug"])[None]))
    return samples


def footprint_mask(boxes: list, lidar_aug: Tensor, cells: int = CELLS) -> Tensor:
    """(cells, cells) mask of the BEV cells (x on dim 0) whose centre lies in a box's footprint
    grown by half a cell, so that even a traffic cone marks its cell."""
    low, high, _ = BOUND
    size = (high - low) / cells
    centres = low + (torch.arange(cells, dtype=torch.float64) + 0.5) * size
    grid = torch.stack(torch.meshgrid(centres, centres, indexing="ij"), dim=-1)  # (X, Y, 2)
    grid = grid @ torch.linalg.inv(lidar_aug[:2, :2].double()).T  # undo the LiDAR flips
    mask = torch.zeros(cells, cells)
    for box in boxes:
        yaw = box.orientation.yaw_pitch_roll[0]
        offset = grid - torch.tensor(box.center[:2])
        along = offset[..., 0] * math.cos(yaw) + offset[..., 1] * math.sin(yaw)
        across = offset[..., 1] * math.cos(yaw) - offset[..., 0] * math.sin(yaw)
        width, length = box.wlh[0], box.wlh[1]
        mask[(along.abs() <= (length + size) / 2) & (across.abs() <= (width + size) / 2)] = 1.0
    return mask


def batches(samples: list[Sample], size: int, generator: torch.Generator | None = None):
    """(MultiViewBatch, (B, 1, CELLS, CELLS) masks) of `size` samples each, shuffled when a
    generator is given."""
    order = torch.randperm(len(samples), generator=generator).tolist() if generator else None
    order = order or list(range(len(samples)))
    for start in range(0, len(order), size):
        chosen = [samples[i] for i in order[start : start + size]]
        items, masks = zip(*chosen, strict=True)
        yield collate_multiview(list(items)), torch.stack(masks)


# ---------------------------------------------------------------------------------- model
def conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
    return [conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


class BEVSegmenter(nn.Module):
    """Camera-only BEV segmentation from geomim's parts (see the module docstring)."""

    def __init__(self, model_name: str, weights: Path | None, image_size: tuple[int, int]):
        super().__init__()
        self.backbone = timm.create_model(
            model_name, features_only=True, out_indices=(2, 3), pretrained=weights is not None,
            pretrained_cfg_overlay=dict(file=str(weights)) if weights else None,
        )  # fmt: skip
        c4, c5 = self.backbone.feature_info.channels()
        self.neck = nn.Sequential(*conv_bn_relu(c4 + c5, WIDTH), *conv_bn_relu(WIDTH, WIDTH))
        self.camera = CameraModulation(WIDTH)
        self.view_transform = DepthLSS(
            ViewTransformConfig(
                in_channels=WIDTH, context_channels=32, prediction_channels=1,
                image_size=image_size, xbound=BOUND, ybound=BOUND, dbound=(1.0, 60.0, 1.0),
            )
        )  # fmt: skip  # its BEV convs and 1x1 prediction head are the segmentation head

    def forward(self, batch: MultiViewBatch) -> ViewTransformOutput:
        """.prediction: (B, 1, CELLS, CELLS) footprint logits; .depth: (B*N, bins, h, w)."""
        views = batch.images.shape[1]
        c4, c5 = self.backbone(batch.images)  # (B, N, C4, h, w), (B, N, C5, h/2, w/2)
        c4, c5 = c4.flatten(0, 1), c5.flatten(0, 1)
        c5 = F.interpolate(c5, size=c4.shape[-2:], mode="bilinear", align_corners=False)
        features = self.neck(torch.cat([c4, c5], dim=1))  # (B*N, D, h, w)
        cameras = batch.cameras
        vectors = camera_vector(cameras.intrinsics, cameras.image_aug, cameras.camera_to_ego)
        tokens = features.flatten(2).transpose(1, 2)  # (B*N, h*w, D)
        geometry = self.camera(tokens, vectors.flatten(0, 1)).transpose(1, 2)
        geometry = geometry.reshape(features.shape)  # camera-aware, as BEVDepth's depth net
        return self.view_transform(
            features.unflatten(0, (-1, views)), geometry.unflatten(0, (-1, views)),
            cameras, batch.lidar_aug,
        )  # fmt: skip


# ------------------------------------------------------------------------------- training
def losses(model: BEVSegmenter, batch: MultiViewBatch, masks: Tensor) -> tuple[Tensor, Tensor]:
    """Total loss and its segmentation part (BCE + soft IoU); the rest is LiDAR depth BCE."""
    output = model(batch)
    logits = output.prediction
    bce = F.binary_cross_entropy_with_logits(logits, masks, pos_weight=torch.tensor(4.0))
    probabilities = logits.sigmoid()
    overlap = probabilities * masks
    soft_iou = overlap.sum() / (probabilities + masks - overlap).sum()
    segmentation = bce + 1 - soft_iou
    config = model.view_transform.config
    target = depth_target(batch.depth_maps.flatten(0, 1), config.stride, config.dbound)
    return segmentation + depth_loss(output.depth, target, weight=0.05), segmentation


def iou(predicted: Tensor, truth: Tensor) -> float:
    """Intersection over union of two boolean masks, pooled over everything."""
    return (predicted & truth).sum().item() / max((predicted | truth).sum().item(), 1)


def prior_iou(train: list[Sample], val: list[Sample]) -> float:
    """Validation IoU of a map of where objects usually are, with no image at all: the cells
    occupied in more than a fraction of the training samples (the fraction best on training)."""
    train_masks = torch.stack([mask for _, mask in train]) > 0
    val_masks = torch.stack([mask for _, mask in val]) > 0
    frequency = train_masks.float().mean(dim=0)
    fractions = [0.01 * k for k in range(1, 50)]
    best = max(fractions, key=lambda f: iou((frequency > f).expand_as(train_masks), train_masks))
    return iou((frequency > best).expand_as(val_masks), val_masks)


def evaluate(model: BEVSegmenter, samples: list[Sample]) -> tuple[float, float]:
    """Validation IoU (probability > 0.5, pooled over all samples) and segmentation loss."""
    model.eval()
    predicted, loss = [], 0.0
    with torch.no_grad():
        for batch, masks in batches(samples, 2):
            loss += losses(model, batch, masks)[1].item() * len(masks)
            predicted.append(model(batch).prediction > 0)
    model.train()
    truth = torch.stack([mask for _, mask in samples]) > 0
    return iou(torch.cat(predicted), truth), loss / len(samples)


def fine_tune(
    name: str, weights: Path | None, args: argparse.Namespace, train: list, val: list
) -> dict[str, list[float]]:
    """One run; returns its curves. Every run has the same seed: same head, same batches."""
    torch.manual_seed(args.seed)
    model = BEVSegmenter(args.model, weights, tuple(args.image_size)).train()
    backbone = list(model.backbone.parameters())
    rest = [p for p in model.parameters() if all(p is not q for q in backbone)]
    groups = [{"params": backbone, "lr": args.lr * args.backbone_lr_scale}, {"params": rest}]
    optimizer = torch.optim.AdamW(groups, lr=args.lr, weight_decay=0.01)
    warmup = 10

    def lr_factor(step: int) -> float:  # linear warm-up, cosine decay
        return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / args.steps))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    generator = torch.Generator().manual_seed(args.seed)
    curves: dict[str, list[float]] = {"step": [], "train_loss": [], "val_iou": [], "val_loss": []}
    window, step, started = [], 0, time.perf_counter()
    while step < args.steps:
        for batch, masks in batches(train, args.batch_size, generator):
            total, _ = losses(model, batch, masks)
            optimizer.zero_grad()
            total.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            schedule.step()
            window.append(total.item())
            step += 1
            if step % args.eval_every == 0 or step == args.steps:
                iou, val_loss = evaluate(model, val)
                values = (step, sum(window) / len(window), iou, val_loss)
                for key, value in zip(curves, values, strict=True):
                    curves[key].append(value)
                window = []
                print(
                    f"  {name:<7} step {step:>4}  train loss {curves['train_loss'][-1]:.3f}  "
                    f"val IoU {iou:.3f}  val loss {val_loss:.3f}  "
                    f"({time.perf_counter() - started:.0f} s)",
                    flush=True,
                )
            if step == args.steps:
                break
    return curves


# ---------------------------------------------------------------------------- pretraining
def pretrained_weights(args: argparse.Namespace, train_root: Path) -> tuple[Path, str]:
    """The weight file to start from and the backbone it is for: given, or pretrained here."""
    if args.pretrained is not None:
        return resolve_weights(args.pretrained, args.model)
    from geomim import export, train  # the library's pretraining and export entry points

    run_dir, exported = args.out / "pretrain-run", args.out / "pretrained"
    if not (exported / "model.safetensors").is_file():
        overrides = pretraining_overrides(args, train_root, run_dir)
        print(
            f"pretraining {args.model} for {args.pretrain_steps} steps on the training scenes "
            "(images and LiDAR, no labels), as\n"
            f"  python -m geomim.train --config tiny_synthetic {' '.join(overrides)}\n"
            f"  python -m geomim.export {run_dir} {exported}",
            flush=True,
        )
        train.main(["--config", "tiny_synthetic", *overrides, "log.progress=false"])
        export.export_run(run_dir, exported)
    return resolve_weights(exported, args.model)


def pretraining_overrides(args: argparse.Namespace, train_root: Path, run_dir: Path) -> list[str]:
    """`python -m geomim.train --config tiny_synthetic` overrides for the pretraining run."""
    height, width = args.image_size
    return [
        f"data.root={train_root}", f"run_dir={run_dir}", f"model.encoder={args.model}",
        f"model.view_transform.image_size=[{height},{width}]",
        f"train.max_steps={args.pretrain_steps}", f"log.panel_every={args.pretrain_steps}",
    ]  # fmt: skip


def resolve_weights(path: Path, model: str) -> tuple[Path, str]:
    """A weight file and its backbone's name (export folders and our safetensors name it)."""
    if path.is_dir():
        config = json.loads((path / "config.json").read_text())
        return path / "model.safetensors", config.get("architecture", model)
    if not path.is_file():
        raise FileNotFoundError(f"--pretrained {path}: no such file or folder")
    if path.suffix == ".safetensors":
        with safe_open(path, "pt") as weights:
            return path, (weights.metadata() or {}).get("architecture", model)
    return path, model


# ----------------------------------------------------------------------------------- main
def report(curves: dict[str, dict], prior: float, out: Path) -> None:
    """Both curves side by side, as JSON and as a plot (when matplotlib is installed)."""
    names = list(curves)
    print("\n step | " + " | ".join(f"{n:>6} loss  val IoU" for n in names))
    for row, step in enumerate(curves[names[0]]["step"]):
        cells = [
            f"{curves[n]['train_loss'][row]:11.3f}  {curves[n]['val_iou'][row]:7.3f}" for n in names
        ]
        print(f" {step:>4} | " + " | ".join(cells))
    print(f"(a location prior without images: val IoU {prior:.3f})")
    (out / "curves.json").write_text(json.dumps({**curves, "prior_val_iou": prior}, indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        print(f"curves: {out / 'curves.json'} (no plot: matplotlib is not installed)")
        return
    figure, (left, right) = pyplot.subplots(1, 2, figsize=(10, 4))
    for name, curve in curves.items():
        left.plot(curve["step"], curve["train_loss"], marker="o", label=name)
        right.plot(curve["step"], curve["val_iou"], marker="o", label=name)
    right.axhline(prior, color="gray", linestyle="--", label="location prior, no images")
    left.set(xlabel="step", ylabel="loss", title="training loss")
    right.set(xlabel="step", ylabel="IoU", title="validation IoU of object footprints")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(out / "finetune_bev.png", dpi=100)
    print(f"curves: {out / 'curves.json'}, plot: {out / 'finetune_bev.png'}")


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    per_scene = args.samples_per_scene
    train_root = synthetic_split(args.out / "train", args.train_scenes, per_scene, args.seed)
    val_root = synthetic_split(args.out / "val", args.val_scenes, per_scene, args.seed + 1)
    weights, args.model = pretrained_weights(args, train_root)
    print(f"loading data ({torch.get_num_threads()} CPU threads)", flush=True)
    train, val = load_split(train_root, args.image_size), load_split(val_root, args.image_size)
    occupied = torch.stack([mask for _, mask in val]).mean().item()
    print(f"  {len(train)} training, {len(val)} validation samples; {occupied:.1%} cells occupied")
    curves = {}
    for name, start in (("random", None), ("geomim", weights)):
        print(f"fine-tuning {args.model} from {start or 'random weights'}", flush=True)
        curves[name] = fine_tune(name, start, args, train, val)
    report(curves, prior_iou(train, val), args.out)
    print(f"total time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
