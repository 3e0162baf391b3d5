"""The view transform: official parity, frustum geometry under augmentation, cell assignment."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from geomim.data.batch import CameraGeometry
from geomim.data.geometry import ImageAug, project_points
from geomim.kernels import last_backend, set_backend
from geomim.kernels.bev_pool import bev_pool
from geomim.pretrain.losses import (
    depth_loss,
    depth_target,
    normalize_patches,
    reconstruction_loss,
)
from geomim.pretrain.view_transform import OFFICIAL_GRID_BUFFERS, DepthLSS, ViewTransformConfig
from tests.helpers import FIXTURES

# the fixture's configuration (config.json): 64 x 352 images, 128 x 128 cells of 0.8 m
OFFICIAL_TINY = ViewTransformConfig(
    in_channels=64,
    context_channels=16,
    prediction_channels=32,
    image_size=(64, 352),
    xbound=(-51.2, 51.2, 0.8),
    ybound=(-51.2, 51.2, 0.8),
)
SMALL = ViewTransformConfig(
    in_channels=8,
    context_channels=4,
    prediction_channels=6,
    num_views=2,
    image_size=(64, 176),
    dbound=(2.0, 50.0, 4.0),
)


@pytest.fixture(scope="module", params=["sparse", "index_add", "reference"])
def official(request):
    """The official fixture through our view transform, with each pooling backend."""
    folder = FIXTURES / "official-lss-tiny"
    state_dict = load_file(folder / "state_dict.safetensors")
    io = load_file(folder / "io.safetensors")
    model = DepthLSS(OFFICIAL_TINY)
    own_buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    model.load_state_dict(state_dict, strict=True)
    model.eval()
    cameras = CameraGeometry(
        intrinsics=io["intrinsics"],
        camera_to_ego=io["camera_to_ego"],
        camera_to_lidar=io["camera_to_lidar"],
        lidar_to_image=io["lidar_to_image"],
        image_aug=io["img_aug_matrix"],
    )
    set_backend("splat", request.param)
    try:
        with torch.no_grad():
            outputs = [
                model(
                    io["semantic"][g], io["geometry_features"][g], cameras, io["lidar_aug_matrix"]
                )
                for g in range(2)
            ]
        assert last_backend("splat") == request.param
    finally:
        set_backend("splat", None)
    return {
        "model": model,
        "io": io,
        "cameras": cameras,
        "outputs": outputs,
        "own": own_buffers,
        "state_dict": state_dict,
    }


def test_official_grid_and_frustum_buffers_are_rebuilt_from_the_config(official):
    names = {**OFFICIAL_GRID_BUFFERS, "frustum": "frustum"}
    for official_name, name in names.items():
        theirs, ours = official["state_dict"][official_name], official["own"][name]
        assert ours.dtype == theirs.dtype
        torch.testing.assert_close(ours, theirs, atol=0, rtol=0)
        torch.testing.assert_close(getattr(official["model"], name), theirs, atol=0, rtol=0)


def test_grid_buffers_are_left_out_of_our_state_dict_and_older_ones_still_load():
    model = DepthLSS(SMALL)
    state_dict = model.state_dict()
    assert not set(OFFICIAL_GRID_BUFFERS) & set(state_dict)
    assert not set(OFFICIAL_GRID_BUFFERS.values()) & set(state_dict)
    older = {**state_dict, **{k: getattr(model, v) for k, v in OFFICIAL_GRID_BUFFERS.items()}}
    DepthLSS(SMALL).load_state_dict(older, strict=True)


def test_a_checkpoint_for_another_grid_is_refused_naming_both_grids():
    model = DepthLSS(SMALL)
    state_dict = {**model.state_dict(), "dx": torch.tensor([0.6, 0.6, 20.0])}
    with pytest.raises(ValueError, match=r"dx \(cell_size\) in the checkpoint is \[0\.6"):
        DepthLSS(SMALL).load_state_dict(state_dict)


def test_frustum_points_match_the_official_ones(official):
    points = official["model"].frustum_points(
        official["cameras"], official["io"]["lidar_aug_matrix"]
    )
    torch.testing.assert_close(points, official["io"]["frustum_points"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("group", [0, 1])
def test_bev_and_prediction_match_the_official_ones(official, group):
    output = official["outputs"][group]
    torch.testing.assert_close(output.bev, official["io"]["bev"][group], atol=1e-4, rtol=0)
    torch.testing.assert_close(
        output.prediction, official["io"]["prediction"][group], atol=1e-4, rtol=0
    )


def test_losses_averaged_over_groups_match_the_official_ones(official):
    io, outputs = official["io"], official["outputs"]
    target = depth_target(io["depth_map"].flatten(0, 2), OFFICIAL_TINY.stride, OFFICIAL_TINY.dbound)
    teacher = normalize_patches(io["teacher"], patch=16)
    depth = sum(depth_loss(o.depth, target) for o in outputs) / 2
    reconstruction = sum(reconstruction_loss(o.prediction, teacher) for o in outputs) / 2
    torch.testing.assert_close(depth.view(1), io["depth_loss"], atol=1e-4, rtol=0)
    torch.testing.assert_close(reconstruction.view(1), io["reconstruction_loss"], atol=1e-4, rtol=0)


def small_cameras(batch: int = 2) -> tuple[CameraGeometry, torch.Tensor]:
    """Two cameras with different image augmentations (each of flip, rotation, resize, crop) and
    a LiDAR augmentation (rotation, flip, shift) per sample."""
    augs = [
        ImageAug(resize=0.11, crop=(0, 35, 176, 99), flip=True, rotate_degrees=5.0),
        ImageAug(resize=0.15, crop=(30, 71, 206, 135), flip=False, rotate_degrees=-3.0),
    ]
    image_aug = torch.tensor(np.stack([a.matrix() for a in augs]), dtype=torch.float32)
    intrinsics = torch.eye(4)
    intrinsics[:3, :3] = torch.tensor([[1260.0, 0, 800], [0, 1250, 450], [0, 0, 1]])
    # camera z forward along LiDAR x, camera x = -LiDAR y, camera y = -LiDAR z; then a yaw
    forward = torch.tensor([[0.0, 0, 1], [-1, 0, 0], [0, -1, 0]])
    camera_to_lidar = torch.eye(4).repeat(2, 1, 1)
    for view, (yaw, shift) in enumerate([(0.4, (1.5, 0.2, 1.6)), (-2.0, (-0.9, -0.4, 1.5))]):
        camera_to_lidar[view, :3, :3] = rotation_z(yaw) @ forward
        camera_to_lidar[view, :3, 3] = torch.tensor(shift)
    lidar_to_image = intrinsics @ torch.linalg.inv(camera_to_lidar)
    lidar_aug = torch.eye(4).repeat(batch, 1, 1)
    for sample in range(batch):
        lidar_aug[sample, :3, :3] = torch.diag(torch.tensor([1.0, -1.0, 1.0])) @ rotation_z(
            0.3 - sample
        )
        lidar_aug[sample, :3, 3] = torch.tensor([0.8, -0.5, 0.1]) * (sample + 1)
    cameras = CameraGeometry(
        intrinsics=intrinsics.expand(batch, 2, 4, 4),
        camera_to_ego=camera_to_lidar.expand(batch, 2, 4, 4),
        camera_to_lidar=camera_to_lidar.expand(batch, 2, 4, 4),
        lidar_to_image=lidar_to_image.expand(batch, 2, 4, 4),
        image_aug=image_aug.expand(batch, 2, 4, 4),
    )
    return cameras, lidar_aug


def rotation_z(angle: float) -> torch.Tensor:
    cos, sin = math.cos(angle), math.sin(angle)
    return torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])


def test_frustum_maps_a_pixel_at_known_depth_back_to_the_point_that_produced_it():
    cameras, lidar_aug = small_cameras()
    points = torch.tensor([[12.0, 3.0, -0.5], [30.0, -6.0, 1.0], [-8.0, 4.0, 0.3], [-25.0, -1, 2]])
    model = DepthLSS(SMALL)
    for sample in range(2):
        for view in range(2):
            pixels, depth = project_points(
                points,
                cameras.lidar_to_image[sample, view : view + 1],
                cameras.image_aug[sample, view : view + 1],
                lidar_aug[sample],
            )
            in_front = depth[0] > 1
            assert in_front.any()
            model.frustum = torch.cat([pixels[0], depth[0, :, None]], dim=1)[in_front]
            model.frustum = model.frustum.view(-1, 1, 1, 3)  # (D, h, w, 3): one pixel per depth
            lifted = model.frustum_points(cameras, lidar_aug)[sample, view, :, 0, 0]
            torch.testing.assert_close(lifted, points[in_front], atol=1e-4, rtol=1e-5)


def test_every_frustum_point_projects_back_to_its_pixel_and_depth():
    cameras, lidar_aug = small_cameras()
    model = DepthLSS(SMALL)
    points = model.frustum_points(cameras, lidar_aug)  # (B, N, D, h, w, 3)
    assert points.shape == (2, 2, 12, 4, 11, 3)
    for sample in range(2):
        for view in range(2):
            pixels, depth = project_points(
                points[sample, view].reshape(-1, 3),
                cameras.lidar_to_image[sample, view : view + 1],
                cameras.image_aug[sample, view : view + 1],
                lidar_aug[sample],
            )
            frustum = model.frustum.view(-1, 3)
            torch.testing.assert_close(pixels[0], frustum[:, :2], atol=2e-3, rtol=0)
            torch.testing.assert_close(depth[0], frustum[:, 2], atol=0, rtol=1e-5)


def pool(model: DepthLSS, features: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(B, N, D, h, w, C) features at (B, N, D, h, w, 3) points -> (B, Z * C, X, Y) sums, through
    the model's cells and BEV layout (the forward pools through `splat` instead)."""
    cells, num_cells = model.cells(points)
    flat = features.reshape(-1, features.shape[-1])
    return model.to_bev(bev_pool(flat, cells.view(-1), num_cells + 1)[:-1], points.shape[0])


def one_point_features(points: list[tuple[float, float, float]], channels: int = 4):
    """Point p carries the feature p + 1 in channel p % channels, laid out (1, 1, 1, 1, P, ...)."""
    features = torch.zeros(len(points), channels)
    for index in range(len(points)):
        features[index, index % channels] = index + 1
    return features.view(1, 1, 1, 1, -1, channels), torch.tensor(points).view(1, 1, 1, 1, -1, 3)


def test_points_land_in_the_cells_their_coordinates_say():
    model = DepthLSS(ViewTransformConfig(in_channels=8, context_channels=4))  # official grid
    features, points = one_point_features(
        [(10.1, -20.5, 0.0), (-53.6, 53.9, 9.0), (0.1, 0.0, 0.0), (0.2, 0.0, 0.0)]
    )
    bev = pool(model, features, points)  # (1, 4, 360, 360), x on dim -2
    assert bev.shape == (1, 4, 360, 360)
    expected = torch.zeros_like(bev)
    expected[0, 0, 213, 111] = 1  # (10.1 + 54) / 0.3 = 213.7, (-20.5 + 54) / 0.3 = 111.7
    expected[0, 1, 1, 359] = 2  # 0.4 / 0.3 = 1.3, 107.9 / 0.3 = 359.7
    expected[0, 2, 180, 180] = 3  # two points in one cell: their features add up
    expected[0, 3, 180, 180] = 4
    torch.testing.assert_close(bev, expected, atol=0, rtol=0)


def test_cell_index_truncates_toward_zero_and_drops_the_rest():
    model = DepthLSS(ViewTransformConfig(in_channels=8, context_channels=4))
    features, points = one_point_features(
        [
            (-54.2, 0.0, 0.0),  # -0.67 cells truncates to 0: kept (the official quirk)
            (0.0, 0.0, -29.0),  # z -0.95 cells: kept in the single z cell
            (-54.4, 0.0, 0.0),  # -1.33 cells -> -1: dropped
            (54.0, 0.0, 0.0),  # cell 360 of 360: dropped
            (0.0, 0.0, 10.0),  # z cell 1 of 1: dropped
        ]
    )
    bev = pool(model, features, points)
    assert bev[0, 0, 0, 180] == 1
    assert bev[0, 1, 180, 180] == 2
    assert bev.count_nonzero() == 2


def test_z_cells_fold_into_channels_z_major():
    config = ViewTransformConfig(in_channels=8, context_channels=4, zbound=(-10.0, 10.0, 10.0))
    model = DepthLSS(config)
    features, points = one_point_features([(0.1, 0.1, -5.0), (0.1, 0.1, 5.0)], channels=4)
    bev = pool(model, features, points)  # (1, Z * C = 8, 360, 360)
    assert bev.shape == (1, 8, 360, 360)
    assert bev[0, 0, 180, 180] == 1  # z 0, channel 0
    assert bev[0, 4 + 1, 180, 180] == 2  # z 1, channel 1: channel index z * C + c
    assert model.downsample[0].in_channels == 8


def small_inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    semantic, geometry = torch.randn(2, 2, 2, 8, 4, 11, generator=generator)
    return semantic, geometry


def test_outputs_have_the_configured_shapes_and_normalised_depth():
    cameras, lidar_aug = small_cameras()
    semantic, geometry = small_inputs()
    output = DepthLSS(SMALL).eval()(semantic, geometry, cameras, lidar_aug)
    assert output.bev.shape == (2, 4, 180, 180)
    assert output.prediction.shape == (2, 6, 180, 180)
    assert output.depth.shape == (4, 12, 4, 11)
    torch.testing.assert_close(output.depth.sum(dim=1), torch.ones(4, 4, 11))


def test_gradients_reach_both_decoder_maps():
    cameras, lidar_aug = small_cameras()
    semantic, geometry = (t.requires_grad_() for t in small_inputs(1))
    output = DepthLSS(SMALL).train()(semantic, geometry, cameras, lidar_aug)
    output.prediction.square().mean().backward()
    for grad in (semantic.grad, geometry.grad):
        assert torch.isfinite(grad).all() and grad.abs().max() > 0


def test_geometry_stays_float32_under_bfloat16_autocast():
    cameras, lidar_aug = small_cameras()
    model = DepthLSS(SMALL).eval()
    exact = model.frustum_points(cameras, lidar_aug)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        points = model.frustum_points(cameras, lidar_aug)
        output = model(*small_inputs(), cameras, lidar_aug)
    assert points.dtype == torch.float32
    torch.testing.assert_close(points, exact, atol=0, rtol=0)
    assert torch.isfinite(output.prediction).all()


def test_official_defaults_and_state_dict_names():
    with torch.device("meta"):
        model = DepthLSS()
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert shapes["depthnet.0.weight"] == (512, 1024, 3, 3)
    assert shapes["depthnet.6.weight"] == (118 + 80, 512, 1, 1)
    assert shapes["downsample.3.weight"] == (80, 80, 3, 3)
    assert "downsample.0.bias" not in shapes and "prediction_head.bias" in shapes
    assert shapes["prediction_head.weight"] == (256, 80, 1, 1)
    assert shapes["frustum"] == (118, 16, 44, 3)
    assert model.grid_cells.dtype == torch.int64
    assert ViewTransformConfig().grid_size == (360, 360, 1)


def test_input_shapes_are_checked_against_the_config():
    cameras, lidar_aug = small_cameras()
    semantic, geometry = small_inputs()
    with pytest.raises(ValueError, match=r"expected semantic maps \(B, 2, 8, 4, 11\)"):
        DepthLSS(SMALL)(semantic[:, :1], geometry, cameras, lidar_aug)
    with pytest.raises(ValueError, match=r"expected lidar_aug \(2, 4, 4\)"):
        DepthLSS(SMALL)(semantic, geometry, cameras, lidar_aug[:1])
    with pytest.raises(ValueError, match="multiple of the stride"):
        ViewTransformConfig(image_size=(250, 704))
