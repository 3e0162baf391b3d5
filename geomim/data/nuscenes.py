"""nuScenes multi-camera + LiDAR samples for GeoMIM pretraining (the official BEVFusion pipeline).

The devkit (`pip install "geomim[nuscenes]"`) is read once to build an index of everything a sample
needs (file paths, calibrations, poses, LiDAR sweeps); the index is cached, so later start-ups, and
data-loader workers, never load the devkit's tables again.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor
from torch.utils.data import Dataset

from geomim.data.batch import check_camera_values, check_points
from geomim.data.cameras import CAMERAS  # the order the official data pipeline stacks them
from geomim.data.geometry import (
    RECIPE_WIDTH_RATIO,
    RESIZE_RANGE,
    TEST_RESIZE,
    ImageAug,
    depth_maps,
    lidar_aug_matrix,
    resize_scale,
    sample_image_aug,
)
from geomim.data.nuscenes_index import load_index, split_scenes

logger = logging.getLogger(__name__)

# The version of the point loading below, part of a teacher cache's source: bump it when the
# points a PointConfig gives change. 2: the key frame keeps its close points (as the official).
POINTS_FORMAT = 2


@dataclass(frozen=True)
class PointConfig:
    """LiDAR loading of the official recipe: 9 of up to 10 previous sweeps, a time-lag channel,
    a close-point filter on the sweeps only (the key frame keeps its close points), and a strict
    range filter after augmentation."""

    sweeps: int = 9
    stored_sweeps: int = 10
    close_radius: float = 1.0  # sweeps (and padding copies) drop |x| < r and |y| < r
    pad_empty_sweeps: bool = True  # no sweeps: 9 close-filtered copies of the key frame, lag 0
    point_range: tuple[float, ...] = (-54.0, -54.0, -5.0, 54.0, 54.0, 3.0)


class NuScenesMultiView(Dataset):
    """One item per nuScenes sample: six augmented camera images, their geometry, the multi-sweep
    LiDAR points and a sparse depth map per camera. Batch items with `collate_multiview`.

    Args:
        dataroot: folder holding `v1.0-*/`, `samples/`, `sweeps/`.
        version: devkit version, e.g. "v1.0-trainval" or "v1.0-mini".
        split: an official split name ("train", "val", "mini_train", ...), or None for every scene.
        scenes: scene names to keep (overrides `split`).
        cameras: the camera channels, in this order (default: the six, in the official order).
        train: random augmentation (True) or the fixed test-time one (False).
        image_size: (width, height) of the network input.
        seed: augmentation seed; with `set_epoch`, items are reproducible whatever the workers.
        cache_dir: where the index is cached (default: `dataroot/.geomim-cache`); None disables.
        skip_bad: skip samples whose files are missing or unreadable, or whose points or
            calibration are not finite or not invertible (counted, reported once), instead of
            raising.

    Checked as the data enters: an empty `scenes` is an error; an unreadable index cache is
    rebuilt (warning); points files must hold finite values and calibrations finite,
    invertible matrices (errors name the sample, file or camera); images that cannot fill
    `image_size` at the recipe's scale are reported once (warning). Points follow the official
    loader (see `_read_points`).
    """

    def __init__(
        self,
        dataroot: str | os.PathLike,
        version: str = "v1.0-trainval",
        split: str | None = "train",
        scenes: Sequence[str] | None = None,
        cameras: Sequence[str] = CAMERAS,
        train: bool = True,
        image_size: tuple[int, int] = (704, 256),
        points: PointConfig = PointConfig(),
        seed: int = 0,
        cache_dir: str | os.PathLike | None = "",
        skip_bad: bool = False,
    ) -> None:
        unknown = sorted(set(cameras) - set(CAMERAS))
        if unknown or not cameras:
            raise ValueError(
                f"cameras must be a non-empty subset of {CAMERAS}, got {list(cameras)}"
            )
        self.dataroot = Path(dataroot)
        self.version = version
        self.cameras = tuple(cameras)
        self.train = train
        self.image_size = image_size
        self.points = points
        self.seed = seed
        self.epoch = 0
        self.skip_bad = skip_bad
        self.skipped: set[str] = set()  # tokens of the samples skipped as bad
        self._reported = False
        self._warned_small_image = False
        if cache_dir == "":
            cache_dir = self.dataroot / ".geomim-cache"
        scene_names = list(scenes) if scenes is not None else split_scenes(split)
        index = load_index(self.dataroot, version, scene_names, cache_dir, points.stored_sweeps)
        if skip_bad:
            index = index.subset(
                np.array([self._files_present(index.entry(i)) for i in range(len(index))])
            )
            if self.skipped:
                self._report_skipped("missing files")
        self.index = index

    def __len__(self) -> int:
        return len(self.index)

    def set_epoch(self, epoch: int) -> None:
        """Draw new augmentations (the same for every worker layout) in the next epoch."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict:
        for attempt in range(len(self.index)):
            entry = self.index.entry((index + attempt) % len(self.index))
            try:
                return self._load(entry, np.random.default_rng([self.seed, self.epoch, index]))
            except (OSError, ValueError) as error:
                if not self.skip_bad:
                    raise
                self.skipped.add(entry["token"])
                self._report_skipped(str(error))
        raise RuntimeError(f"every sample of {self.dataroot} failed to load")

    def sample_points(self, index: int) -> tuple[str, Tensor]:
        """Sample `index`'s token and LiDAR points, not augmented, range-filtered: (P, 5); the
        sweeps (where more are stored than used) drawn by a generator seeded with `seed` and
        `index`, so a teacher-feature cache is reproducible."""
        entry = self.index.entry(index)
        rng = np.random.default_rng([self.seed, 0, index, 1])
        points = _in_range(self._read_points(entry, rng), self.points.point_range)
        return entry["token"], torch.from_numpy(points)

    # ----------------------------------------------------------------------------- loading
    def _load(self, entry: dict, rng: np.random.Generator) -> dict:
        images, image_augs, intrinsics, camera_to_ego, camera_to_lidar = [], [], [], [], []
        for channel in self.cameras:
            camera = entry["cameras"][channel]
            image = self._read_image(camera["path"], entry["token"])
            self._check_image_size(image.size, channel, entry["token"])
            aug = sample_image_aug(rng, image.size, self.image_size, train=self.train)
            images.append(_augment_image(image, aug))
            image_augs.append(aug.matrix())
            intrinsic = np.eye(4)
            intrinsic[:3, :3] = camera["intrinsics"]
            intrinsics.append(intrinsic)
            camera_to_ego.append(camera["camera_to_ego"])
            camera_to_lidar.append(camera["camera_to_lidar"])
        flips = rng.uniform(size=2) < 0.5 if self.train else (False, False)
        lidar_aug = lidar_aug_matrix(flip_x=bool(flips[0]), flip_y=bool(flips[1]))
        points = self._read_points(entry, rng)
        points[:, :3] = points[:, :3] @ lidar_aug[:3, :3].T.astype(np.float32)
        points = torch.from_numpy(_in_range(points, self.points.point_range))

        # The calibration enters here (from the index): checked before camera_to_lidar is inverted.
        calibration = {
            "intrinsics": np.stack(intrinsics),
            "camera_to_ego": np.stack(camera_to_ego),
            "camera_to_lidar": np.stack(camera_to_lidar),
        }
        check_camera_values(
            {name: torch.from_numpy(m)[None] for name, m in calibration.items()},
            [entry["token"]],
            self.cameras,
        )
        # lidar_to_image in float64 first: large ego translations cancel in the product
        lidar_to_image = _stack(
            calibration["intrinsics"] @ np.linalg.inv(calibration["camera_to_lidar"])
        )
        intrinsics_t, camera_to_lidar_t = _stack(intrinsics), _stack(camera_to_lidar)
        image_aug = _stack(image_augs)
        lidar_aug_t = torch.as_tensor(lidar_aug, dtype=torch.float32)
        width, height = self.image_size
        return {
            "token": entry["token"],
            "camera_names": self.cameras,  # names the camera in `collate_multiview`'s errors
            "images": torch.stack(images),  # (N, 3, H, W), normalised
            "intrinsics": intrinsics_t,  # (N, 4, 4)
            "camera_to_ego": _stack(camera_to_ego),
            "camera_to_lidar": camera_to_lidar_t,
            "lidar_to_image": lidar_to_image,
            "image_aug": image_aug,
            "lidar_aug": lidar_aug_t,  # (4, 4)
            "points": points,  # (P, 5): x, y, z, intensity, time lag (s), augmented LiDAR frame
            "depth_maps": depth_maps(
                points, lidar_to_image, image_aug, lidar_aug_t, (height, width)
            ),
        }

    def _read_image(self, relative: str, token: str) -> Image.Image:
        path = self.dataroot / relative
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except OSError as error:
            raise OSError(f"cannot read image {path} of sample {token}: {error}") from error

    def _read_points(self, entry: dict, rng: np.random.Generator) -> np.ndarray:
        """Key frame (lag 0) then the sweeps, in the key frame's LiDAR frame: (P, 5) float32.

        As the official `LoadPointsFromMultiSweeps` with GeoMIM's (BEVFusion's) settings: the
        key frame keeps all its points, close ones included; each sweep drops its close points
        (`close_radius`) in its own frame, then moves to the key frame with lag = key-frame time
        - sweep time. Without any sweep, `pad_empty_sweeps` appends `sweeps` close-filtered
        copies of the key frame, lag 0. Up to `sweeps` stored sweeps are all used, in order;
        more are a random choice of `sweeps` without replacement, in random order, whether
        `train` or not: the official configs leave mmdet3d's `test_mode` (the nearest `sweeps`,
        in order) off in every split, so the teacher saw random choices in evaluation too. The
        choice comes from `rng`, so a test-mode item is still reproducible.
        """
        config = self.points
        key = self._read_bin(entry["lidar_path"], entry["token"])
        key[:, 4] = 0
        sweeps = entry["sweeps"][: config.stored_sweeps]
        if len(sweeps) > config.sweeps:
            sweeps = [sweeps[i] for i in rng.choice(len(sweeps), config.sweeps, replace=False)]
        clouds = [key]
        for sweep in sweeps:
            points = _remove_close(
                self._read_bin(sweep["path"], entry["token"]), config.close_radius
            )
            transform = np.asarray(sweep["sensor_to_lidar"], dtype=np.float32)
            points[:, :3] = points[:, :3] @ transform[:3, :3].T + transform[:3, 3]
            points[:, 4] = (entry["timestamp"] - sweep["timestamp"]) / 1e6
            clouds.append(points)
        if not sweeps and config.pad_empty_sweeps:
            padding = _remove_close(key, config.close_radius)
            clouds += [padding.copy() for _ in range(config.sweeps)]
        return np.concatenate(clouds)

    def _read_bin(self, relative: str, token: str) -> np.ndarray:
        path = self.dataroot / relative
        try:
            values = np.fromfile(path, dtype=np.float32)
        except OSError as error:
            raise OSError(f"cannot read points {path} of sample {token}: {error}") from error
        if values.size % 5:
            raise ValueError(
                f"points file {path} of sample {token} holds {values.size} floats, "
                "expected a multiple of 5 (x, y, z, intensity, ring)"
            )
        points = values.reshape(-1, 5).copy()
        check_points(torch.from_numpy(points), f"file {path} of sample {token}")
        return points

    def _check_image_size(self, size: tuple[int, int], channel: str, token: str) -> None:
        """Warn once if images are smaller than the recipe's field of view needs for this input
        (they are upscaled, hence blurred), or cannot fill it at all (black padding)."""
        if self._warned_small_image:
            return
        width, height = size
        final_w, final_h = self.image_size
        resize = resize_scale(size, self.image_size) * (
            max(RESIZE_RANGE) if self.train else TEST_RESIZE
        )
        scaled = int(width * resize), int(height * resize)
        scale = "the largest training scale" if self.train else "the test scale"
        if scaled[0] < final_w or scaled[1] < final_h:
            covered = min(1.0, scaled[0] / final_w) * min(1.0, scaled[1] / final_h)
            problem = (
                f"resized by {resize:.3g} ({scale}) it is {scaled[0]}x{scaled[1]}, smaller than "
                f"the {final_w}x{final_h} network input, so {1 - covered:.0%} of the input is "
                "black padding"
            )
        elif resize > 1:
            problem = (
                f"the {final_w}x{final_h} network input needs it upscaled by {resize:.3g} "
                f"({scale}), which blurs it: the recipe takes {final_w}-wide crops of images "
                f"{RECIPE_WIDTH_RATIO**-1:.3g}x as wide"
            )
        else:
            return
        self._warned_small_image = True
        warnings.warn(
            f"{channel} image of sample {token} is {width}x{height}: {problem}; use larger "
            "images or a smaller image_size",
            UserWarning,
            stacklevel=4,
        )

    def _files_present(self, entry: dict) -> bool:
        paths = [entry["lidar_path"], *(s["path"] for s in entry["sweeps"])]
        paths += [entry["cameras"][c]["path"] for c in self.cameras]
        missing = [p for p in paths if not (self.dataroot / p).is_file()]
        if missing:
            self.skipped.add(entry["token"])
        return not missing

    def _report_skipped(self, reason: str) -> None:
        """Warn once per dataset (per worker); `skipped` keeps the full count."""
        if not self._reported:
            logger.warning(
                "skipping bad samples of %s (%d so far; first: %s)",
                self.dataroot,
                len(self.skipped),
                reason,
            )
            self._reported = True


# --------------------------------------------------------------------------------- helpers
def _stack(matrices: list) -> Tensor:
    return torch.as_tensor(np.stack(matrices), dtype=torch.float32)


def _augment_image(image: Image.Image, aug: ImageAug) -> Tensor:
    """PIL resize, crop, flip, rotate (as BEVFusion's ImageAug3D), then ImageNet normalisation."""
    width, height = image.size
    image = image.resize((int(width * aug.resize), int(height * aug.resize)))
    image = image.crop(aug.crop)
    if aug.flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    image = image.rotate(aug.rotate_degrees)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_DEFAULT_STD)[:, None, None]
    return (pixels - mean) / std


def _remove_close(points: np.ndarray, radius: float) -> np.ndarray:
    """Drop points with |x| < radius and |y| < radius (the car itself)."""
    close = (np.abs(points[:, 0]) < radius) & (np.abs(points[:, 1]) < radius)
    return points[~close]


def _in_range(points: np.ndarray, bounds: tuple[float, ...]) -> np.ndarray:
    low, high = np.asarray(bounds[:3]), np.asarray(bounds[3:])
    xyz = points[:, :3]
    return points[((xyz > low) & (xyz < high)).all(axis=1)]
