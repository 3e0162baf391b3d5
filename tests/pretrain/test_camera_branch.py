"""The pretraining camera branch: official parity, checkpoint conversion, camera awareness."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import load_file

import geomim  # noqa: F401
from geomim.kernels import last_backend
from geomim.pretrain.camera import camera_vector
from geomim.pretrain.camera_branch import CameraBranch
from geomim.pretrain.convert import pretrain_checkpoint_filter_fn
from geomim.pretrain.decoder import DecoderConfig
from tests.helpers import FIXTURES, official_state_dict

TINY = DecoderConfig(width=64, heads=4)


@pytest.fixture(scope="module")
def fixture():
    folder = FIXTURES / "official-pretrain-tiny"
    return load_file(folder / "state_dict.safetensors"), load_file(folder / "io.safetensors")


def official_tiny(fixture) -> CameraBranch:
    model = CameraBranch(timm.create_model("geomim_test", out_indices=(2, 3)), 6, TINY)
    model.load_state_dict(pretrain_checkpoint_filter_fn(fixture[0], model))
    return model


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("backend", ["chunked", "sdpa", "reference"])
def test_outputs_match_the_official_encoder_and_decoder(
    fixture, window_attention_backend, mode, backend
):
    model = official_tiny(fixture)
    model.train(mode == "train")
    model.encoder.set_fused_attn(window_attention_backend(backend))
    io = fixture[1]
    with torch.no_grad():
        semantic, geometry = model(
            io["images"].view(1, 6, 3, 64, 352),
            io["intrinsics"],
            io["img_aug_matrix"],
            io["camera_to_ego"],
            io["masks"],
        )
    assert last_backend("window_attention") == backend  # the decoder's smoothing block too
    torch.testing.assert_close(semantic, io[f"{mode}_semantic"], atol=1e-5, rtol=0)
    torch.testing.assert_close(geometry, io[f"{mode}_geometry"], atol=1e-5, rtol=0)


def test_camera_vector_matches_the_official_one(fixture):
    io = fixture[1]
    vector = camera_vector(io["intrinsics"], io["img_aug_matrix"], io["camera_to_ego"])
    torch.testing.assert_close(vector, io["camera_vector"], atol=0, rtol=0)


@pytest.mark.parametrize("variant, size", [("geomim_base", "base"), ("geomim_large", "large")])
def test_official_pretraining_checkpoint_converts_key_for_key(variant, size):
    checkpoint = {
        "state_dict": official_state_dict(
            f"official-keys-pretrain-{size}.txt", prefix="encoders.camera.backbone."
        )
    }
    with torch.device("meta"):
        model = CameraBranch(timm.create_model(variant, out_indices=(2, 3)))
    converted = pretrain_checkpoint_filter_fn(checkpoint["state_dict"], model)
    assert converted.keys() == model.state_dict().keys()


def test_intrinsics_change_geometry_and_leave_semantics(fixture):
    model = official_tiny(fixture).eval()
    io = fixture[1]
    images = io["images"].view(1, 6, 3, 64, 352)
    other = io["intrinsics"].clone()
    other[..., 0, 0] *= 1.3
    with torch.no_grad():
        semantic, geometry = model(
            images, io["intrinsics"], io["img_aug_matrix"], io["camera_to_ego"], io["masks"]
        )
        semantic2, geometry2 = model(
            images, other, io["img_aug_matrix"], io["camera_to_ego"], io["masks"]
        )
    torch.testing.assert_close(semantic, semantic2, atol=0, rtol=0)
    assert (geometry - geometry2).abs().max() > 1e-3


def test_view_count_is_checked(fixture):
    model = official_tiny(fixture)
    io = fixture[1]
    with pytest.raises(ValueError, match=r"expected images \(B, 6, 3, H, W\)"):
        model(
            io["images"], io["intrinsics"], io["img_aug_matrix"], io["camera_to_ego"], io["masks"]
        )
