"""The pretrainer end to end on the synthetic dataset: losses, errors, and learning."""

from __future__ import annotations

import pytest
import torch

from geomim.data import NuScenesMultiView, collate_multiview
from geomim.data.synthetic import generate
from geomim.pretrain.decoder import DecoderConfig
from geomim.pretrain.losses import depth_target
from geomim.pretrain.masking import complementary_masks
from geomim.pretrain.model import GeoMIMPretrainer, PretrainConfig
from geomim.pretrain.teacher import HistogramTeacher
from geomim.pretrain.view_transform import ViewTransformConfig

BOUND = (-51.2, 51.2, 1.6)  # 64 cells, 32 after the downsample


def tiny_config(**overrides) -> PretrainConfig:
    return PretrainConfig(
        **{"encoder": "geomim_test", "teacher_patch": 8, **overrides},
        decoder=DecoderConfig(
            width=32,
            heads=2,
            semantic_depth=4,
            semantic_cross_view=(1, 3),
            geometry_tap=1,
            geometry_depth=2,
        ),
        view_transform=ViewTransformConfig(
            in_channels=32,
            context_channels=16,
            prediction_channels=8,
            image_size=(128, 352),
            xbound=BOUND,
            ybound=BOUND,
        ),
    )


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate(root, scenes=1, samples_per_scene=2, sweeps_per_sample=1, seed=1, progress=False)
    data = NuScenesMultiView(
        root, "v1.0-mini", split=None, train=False, image_size=(352, 128), cache_dir=None
    )
    return collate_multiview([data[1]])


def pretrainer(**config) -> GeoMIMPretrainer:
    torch.manual_seed(0)
    return GeoMIMPretrainer(
        tiny_config(**config), HistogramTeacher(channels=8, cells=32, bound=51.2)
    )


def test_losses_are_finite_scalars_and_both_groups_are_predicted(batch):
    output = pretrainer()(batch)
    assert set(output.losses) == {"reconstruction", "depth", "total"}
    assert all(loss.ndim == 0 and torch.isfinite(loss) for loss in output.losses.values())
    assert len(output.predictions) == 2
    assert output.predictions[0].prediction.shape == (1, 8, 32, 32)
    assert output.predictions[0].depth.shape == (6, 118, 8, 22)
    assert torch.equal(output.group_masks.sum(0), torch.ones(4, 11))


def test_teacher_is_frozen_and_stays_in_eval_mode():
    model = pretrainer().train()
    assert not model.teacher.training
    assert not any(p.requires_grad for p in model.teacher.parameters())


def test_config_mismatches_are_errors():
    with pytest.raises(ValueError, match="in_channels 512 must equal the decoder width 32"):
        PretrainConfig(decoder=DecoderConfig(width=32))
    with pytest.raises(ValueError, match="num_views 6 must equal num_views 5"):
        PretrainConfig(num_views=5)


def test_non_finite_loss_names_the_samples(batch):
    model = pretrainer()
    with torch.no_grad():
        model.view_transform.prediction_head.bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=rf"reconstruction loss.*{batch.tokens[0]}"):
        model(batch)


def test_tiny_pretrainer_overfits_one_batch_and_learns_depth(batch):
    # depth weight 1 (recipe: 0.01) so that depth is learned within a few dozen steps
    model = pretrainer(depth_loss_weight=1.0).train()
    masks = complementary_masks((4, 11), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(60):
        output = model(batch, masks)
        optimizer.zero_grad()
        output.losses["total"].backward()
        optimizer.step()
        losses.append(output.losses["total"].item())
    assert losses[-1] <= 0.5 * losses[0]

    # expected depth bin against the best constant bin, on cells with a LiDAR target
    model.eval()
    with torch.no_grad():
        depth = model(batch, masks).predictions[0].depth  # (N, bins, h, w)
    onehot = depth_target(batch.depth_maps.flatten(0, 1), 16, (1.0, 60.0, 0.5))
    foreground = onehot.amax(1) > 0
    true_bin = onehot[foreground].argmax(1).float()
    probabilities = depth.permute(0, 2, 3, 1).reshape(-1, depth.shape[1])[foreground]
    predicted_bin = (probabilities * torch.arange(depth.shape[1])).sum(1)
    constant_error = (true_bin.median() - true_bin).abs().mean()
    assert (predicted_bin - true_bin).abs().mean() < constant_error


@pytest.mark.parametrize("draw", ["sample", "image"])
def test_masks_drawn_per_sample_or_image_train_end_to_end(batch, draw):
    model = pretrainer(mask_draw=draw).train()
    output = model(batch)
    assert output.group_masks.shape == (2, 6, 4, 11)
    assert torch.equal(output.group_masks.sum(0), torch.ones(6, 4, 11))
    output.losses["total"].backward()
    assert model.camera_branch.encoder.patch_embed.proj.weight.grad.abs().sum() > 0


def test_a_cva_vit_encoder_pretrains_on_visible_tokens_only(batch):
    vit = dict(embed_dim=64, depth=2, num_heads=4, cva_blocks=(1,))
    model = pretrainer(encoder="geomim_vit_small", encoder_kwargs=vit).train()
    assert model.camera_branch.encoder.view_embed.shape == (6, 64)
    output = model(batch)
    assert output.predictions[0].prediction.shape == (1, 8, 32, 32)
    output.losses["total"].backward()
    encoder = model.camera_branch.encoder
    assert encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert encoder.cva["1"].attn.proj.weight.grad.abs().sum() > 0  # zero-initialised: proj first


def test_cross_view_blocks_after_missing_blocks_are_errors():
    with pytest.raises(ValueError, match=r"semantic_cross_view \(1, 5\) must index the 4"):
        DecoderConfig(semantic_depth=4)
    with pytest.raises(ValueError, match="geometry_tap 8 must index one of the 8"):
        DecoderConfig(geometry_tap=8)


def test_unknown_mask_draws_and_ratios_are_errors():
    with pytest.raises(ValueError, match="mask_draw must be one of"):
        tiny_config(mask_draw="pixel")
    with pytest.raises(ValueError, match=r"mask_ratio must lie in \(0, 1\), got 1.0"):
        tiny_config(mask_ratio=1.0)
