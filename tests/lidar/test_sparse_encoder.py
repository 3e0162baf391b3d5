"""The sparse encoder on spconv 2: the official module's outputs, a dense conv3d twin, threads."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from geomim.lidar.convert import lidar_checkpoint_filter_fn
from geomim.lidar.sparse_encoder import SparseEncoder, SparseEncoderConfig, torch_threads
from tests.helpers import FIXTURES

spconv = pytest.importorskip("spconv.pytorch")

FOLDER = FIXTURES / "official-teacher-tiny"
# Official stage name -> ours (`forward_stages` keys).
STAGES = {
    "conv_input": "stem",
    "encoder_layer1": "stages.0",
    "encoder_layer2": "stages.1",
    "encoder_layer3": "stages.2",
    "encoder_layer4": "stages.3",
    "conv_out": "to_bev",
}


@pytest.fixture(scope="module")
def fixture() -> dict:
    return {
        "config": json.loads((FOLDER / "config.json").read_text()),
        "state_dict": load_file(FOLDER / "state_dict.safetensors"),
        "io": load_file(FOLDER / "io.safetensors"),
    }


@pytest.fixture(scope="module")
def encoder(fixture) -> SparseEncoder:
    sparse_shape = fixture["config"]["official_kwargs"]["sparse_shape"]
    model = SparseEncoder(SparseEncoderConfig(sparse_shape=sparse_shape)).eval()
    model.load_state_dict(lidar_checkpoint_filter_fn(fixture["state_dict"], model), strict=True)
    return model


def sorted_rows(indices: torch.Tensor, features: torch.Tensor):
    """Rows sorted by (batch, x, y, z): spconv's row order is an implementation detail."""
    order = sorted(range(len(indices)), key=lambda row: indices[row].tolist())
    return indices[order].long(), features[order]


def test_output_equals_the_official_module(encoder, fixture):
    io = fixture["io"]
    with torch.no_grad():
        output = encoder(io["voxel_features"], io["coords"], batch_size=2)
    assert output.shape == (2, 256, 9, 6) == (2, *encoder.config.bev_shape)
    assert (output - io["output"]).abs().max() <= 1e-4


def test_every_stage_has_the_official_active_set_and_features(encoder, fixture):
    io, shapes = fixture["io"], fixture["config"]["shapes"]["stages"]
    with torch.no_grad():
        stages = encoder.forward_stages(io["voxel_features"], io["coords"], batch_size=2)
    assert list(stages) == list(STAGES.values())
    for official, ours in STAGES.items():
        indices, features = sorted_rows(stages[ours].indices, stages[ours].features)
        assert torch.equal(indices, io[f"stage_{official}_indices"].long()), official
        assert (features - io[f"stage_{official}_features"]).abs().max() <= 1e-4, official
        assert list(stages[ours].spatial_shape) == shapes[official]["spatial_shape"]
        assert encoder.config.stage_shapes()[ours] == tuple(shapes[official]["spatial_shape"])


def dense_reference(state_dict, features, coords, batch_size, sparse_shape):
    """The encoder as dense convolutions of the official-layout weights: inactive sites are zero,
    every conv's output is multiplied by its active mask, a strided conv's mask is
    conv3d(mask, ones) > 0; BatchNorm and ReLU act on the active sites only."""

    def conv(x, mask, name, stride=1, padding=1, submanifold=True):
        weight = state_dict[f"{name}.weight"].permute(4, 3, 0, 1, 2)  # (out, in, k0, k1, k2)
        if not submanifold:
            window = torch.ones(1, 1, *weight.shape[2:])
            mask = (F.conv3d(mask, window, stride=stride, padding=padding) > 0).float()
        return F.conv3d(x, weight, stride=stride, padding=padding) * mask, mask

    def norm(x, mask, name):
        shape = (1, -1, 1, 1, 1)
        mean, var = state_dict[f"{name}.running_mean"], state_dict[f"{name}.running_var"]
        scale = state_dict[f"{name}.weight"] / (var + 1e-3).sqrt()
        shifted = (x - mean.view(shape)) * scale.view(shape) + state_dict[f"{name}.bias"].view(
            shape
        )
        return shifted * mask

    def conv_norm_relu(x, mask, prefix, **conv_args):
        x, mask = conv(x, mask, f"{prefix}.0", **conv_args)
        return norm(x, mask, f"{prefix}.1").relu(), mask

    def basic_block(x, mask, prefix):
        out, _ = conv(x, mask, f"{prefix}.conv1")
        out, _ = conv(norm(out, mask, f"{prefix}.bn1").relu(), mask, f"{prefix}.conv2")
        return (norm(out, mask, f"{prefix}.bn2") + x).relu()

    x = torch.zeros(batch_size, features.shape[1], *sparse_shape)
    mask = torch.zeros(batch_size, 1, *sparse_shape)
    batch, cx, cy, cz = coords.long().unbind(1)
    x[batch, :, cx, cy, cz] = features
    mask[batch, 0, cx, cy, cz] = 1.0
    x, mask = conv_norm_relu(x, mask, "conv_input")
    paddings = [1, 1, (1, 1, 0)]
    for stage in range(1, 5):
        prefix = f"encoder_layers.encoder_layer{stage}"
        x = basic_block(x, mask, f"{prefix}.0")
        x = basic_block(x, mask, f"{prefix}.1")
        if stage < 4:
            down = {"stride": 2, "padding": paddings[stage - 1], "submanifold": False}
            x, mask = conv_norm_relu(x, mask, f"{prefix}.2", **down)
    down = {"stride": (1, 1, 2), "padding": 0, "submanifold": False}
    x, mask = conv_norm_relu(x, mask, "conv_out", **down)  # (B, C, X, Y, D)
    return x.permute(0, 1, 4, 2, 3).flatten(1, 2), mask[:, 0]  # channel = c * D + d


def test_encoder_equals_a_dense_conv3d_twin_on_random_sparse_input(fixture):
    sparse_shape = (24, 20, 41)
    model = SparseEncoder(SparseEncoderConfig(sparse_shape=sparse_shape)).eval()
    model.load_state_dict(lidar_checkpoint_filter_fn(fixture["state_dict"], model))
    generator = torch.Generator().manual_seed(0)
    cells = torch.randperm(2 * 24 * 20 * 41, generator=generator)[:900]  # unique (b, x, y, z)
    coords = torch.stack(torch.unravel_index(cells, (2, *sparse_shape)), dim=1).int()
    features = torch.randn(len(coords), 5, generator=generator)
    with torch.no_grad():
        output = model(features, coords, batch_size=2)
        stages = model.forward_stages(features, coords, batch_size=2)
    expected, mask = dense_reference(fixture["state_dict"], features, coords, 2, sparse_shape)
    assert output.shape == expected.shape == (2, 256, 3, 3)
    assert (output - expected).abs().max() <= 1e-4
    active = stages["to_bev"].indices.long()
    dense_active = torch.zeros_like(mask)
    dense_active[active[:, 0], active[:, 1], active[:, 2], active[:, 3]] = 1.0
    assert torch.equal(dense_active, mask)


def test_spconv_runs_single_threaded_and_the_thread_count_is_restored(encoder, fixture):
    """spconv 2's CPU conv gets rows wrong at random on several torch threads (a race)."""
    io, seen = fixture["io"], []
    convs = [
        m for m in encoder.modules() if isinstance(m, (spconv.SubMConv3d, spconv.SparseConv3d))
    ]
    handles = [
        c.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads())) for c in convs
    ]
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad():
            encoder(io["voxel_features"], io["coords"], batch_size=2)
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)
        for handle in handles:
            handle.remove()
    assert len(convs) == 21 and seen == [1] * 21
    assert after == 2


def test_the_thread_count_is_restored_after_an_error():
    previous = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="inside"), torch_threads(1):
        assert torch.get_num_threads() == 1
        raise RuntimeError("inside")
    assert torch.get_num_threads() == previous


def test_no_voxels_give_an_all_zero_map(encoder):
    output = encoder(torch.zeros(0, 5), torch.zeros(0, 4, dtype=torch.int32), batch_size=3)
    assert output.shape == (3, 256, 9, 6) and not output.any()


def test_the_full_teacher_shapes_are_the_official_ones():
    config = SparseEncoderConfig()
    assert config.stage_shapes() == {
        "stem": (1440, 1440, 41),
        "stages.0": (720, 720, 21),
        "stages.1": (360, 360, 11),
        "stages.2": (180, 180, 5),
        "stages.3": (180, 180, 5),
        "to_bev": (180, 180, 2),
    }
    assert config.bev_shape == (256, 180, 180)


def test_wrong_inputs_are_clear_errors(encoder):
    coords = torch.zeros(3, 4, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"features must be \(V, 5\), got \(3, 4\)"):
        encoder(torch.zeros(3, 4), coords, 1)
    with pytest.raises(ValueError, match=r"coords must be integer \(V=3, 4\)"):
        encoder(torch.zeros(3, 5), coords.float(), 1)
    with pytest.raises(ValueError, match=r"coords must be integer \(V=3, 4\).*\(3, 3\)"):
        encoder(torch.zeros(3, 5), coords[:, :3], 1)
    outside = torch.tensor([[0, 0, 0, 0], [1, 70, 0, 0], [0, 0, 0, 40]], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"\[0, \[1, 70, 46, 41\]\).*maxima \[1, 70, 0, 40\]"):
        encoder(torch.zeros(3, 5), outside, 1)
    with pytest.raises(ValueError, match="down_paddings needs one"):
        SparseEncoderConfig(down_paddings=((1, 1, 1),))
    with pytest.raises(ValueError, match=r"too small: .*\(5, 5, -1\)\]"):
        SparseEncoderConfig(sparse_shape=(40, 40, 8))


def test_a_weight_layout_override_for_spconv_is_refused(monkeypatch):
    """spconv's own load hook would permute the weights the converter has already permuted."""
    monkeypatch.setattr("spconv.constants.SAVED_WEIGHT_LAYOUT", "RSCK")
    with pytest.raises(RuntimeError, match="SPCONV_SAVED_WEIGHT_LAYOUT=RSCK is set; unset it"):
        SparseEncoder(SparseEncoderConfig(sparse_shape=(40, 40, 41)))
