"""timm's model contract for every registered GeoMIM model at a test size (after timm's own
tests/test_models.py): forward, backward, forward_features, forward_intermediates and
features_only, the pretrained cfgs, torch.export and torch.compile."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from timm.data import create_transform, resolve_data_config
from torch import Tensor, nn

import geomim  # noqa: F401  (registers the models)
from geomim.models import GeoMIMViT

# Every registered model with its architecture made small: the same code path, the registered
# head counts and windows, a fraction of the width and depth.
REDUCED = {
    "geomim_test": {},  # already tiny
    "geomim_base": dict(embed_dim=32, depths=(1, 1, 2, 1)),  # heads 4..32: head dim 8
    "geomim_large": dict(embed_dim=48, depths=(1, 1, 2, 1)),  # heads 6..48: head dim 8
    "geomim_vit_small": dict(embed_dim=48, depth=4),  # 6 heads, CVA after every block
    "geomim_vit_base": dict(embed_dim=48, depth=4),  # 12 heads
    "geomim_vit_large": dict(embed_dim=64, depth=4),  # 16 heads
}
MODELS = sorted(REDUCED)
SIZE = (64, 96)  # small images for the forward tests (the cfg tests use the cfg's input_size)


def create(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, **{**REDUCED[name], **kwargs})


def is_vit(model: nn.Module) -> bool:
    model = getattr(model, "model", model)  # a features_only wrapper holds the model
    return isinstance(model, GeoMIMViT)


def images(model: nn.Module, size: tuple[int, int] = SIZE) -> Tensor:
    """Two Swin images, or one whole rig of views for the CVA-ViT: (1, N, 3, H, W)."""
    generator = torch.Generator().manual_seed(0)
    if is_vit(model):
        num_views = getattr(model, "model", model).num_views
        return torch.randn(1, num_views, 3, *size, generator=generator)
    return torch.randn(2, 3, *size, generator=generator)


def leading(x: Tensor) -> tuple[int, ...]:
    """The batch axes: (B,) for 4D images, (B, N) for rigs."""
    return tuple(x.shape[:-3])


def all_outputs(name: str) -> int:
    """out_indices (last n) that builds every output of `name`."""
    with torch.device("meta"):
        return len(timm.create_model(name, **REDUCED[name]).feature_info)


def test_every_registered_model_is_covered():
    assert set(timm.list_models("geomim*")) == set(REDUCED)


# ------------------------------------------------------------------------------- forward
@pytest.mark.parametrize("name", MODELS)
def test_forward_gives_logits_per_image(name):
    model = create(name, num_classes=3).eval()
    x = images(model)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (*leading(x), 3)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_gets_a_gradient_from_forward(name):
    """What DDP needs to fine-tune a classifier without find_unused_parameters."""
    model = create(name, num_classes=3).train()
    model(images(model)).mean().backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unused, f"no gradient for {unused}"


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("out_indices", [None, (1,)], ids=["default", "one-output"])
def test_every_parameter_of_a_feature_model_gets_a_gradient(name, out_indices):
    kwargs = {} if out_indices is None else dict(out_indices=out_indices)
    model = create(name, features_only=True, **kwargs).train()
    sum(output.mean() for output in model(images(model))).backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unused, f"no gradient for {unused}"


# ------------------------------------------------------------------------ forward_features
@pytest.mark.parametrize("name", MODELS)
def test_forward_features_and_head_fit_the_default_cfg(name):
    """timm's test_model_default_cfgs: unpooled maps of pool_size at the cfg's input_size."""
    model = create(name).eval()
    cfg = model.pretrained_cfg
    x = images(model, cfg["input_size"][1:])
    with torch.no_grad():
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
        pooled = model(x)
        model.reset_classifier(0, "")
        unpooled = model(x)
    batch = leading(x)
    assert features.shape == (*batch, model.num_features, *cfg["pool_size"])
    assert pre_logits.shape == (*batch, model.head_hidden_size)
    assert pooled.shape == (*batch, model.num_features)
    torch.testing.assert_close(unpooled, features)


@pytest.mark.parametrize("name", MODELS)
def test_no_classifier_and_no_pool_through_the_constructor(name):
    model = create(name, num_classes=0, global_pool="").eval()
    x = images(model)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_features(x))


@pytest.mark.parametrize("name", MODELS)
def test_classifier_resets(name):
    model = create(name, num_classes=3).eval()
    x = images(model)
    model.reset_classifier(5)
    assert model.get_classifier().out_features == 5
    with torch.no_grad():
        assert model(x).shape == (*leading(x), 5)


# ------------------------------------------------------------------- forward_intermediates
@pytest.mark.parametrize("name", MODELS)
def test_forward_intermediates_gives_every_feature_of_feature_info(name):
    model = create(name, out_indices=all_outputs(name)).eval()
    x = images(model)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        only = model.forward_intermediates(x, intermediates_only=True)
        features = model.forward_features(x)
    assert len(intermediates) == len(model.feature_info)
    for output, info in zip(intermediates, model.feature_info, strict=True):
        expected = [math.ceil(side / info["reduction"]) for side in SIZE]
        assert output.shape == (*leading(x), info["num_chs"], *expected)
    for a, b in zip(only, intermediates, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    torch.testing.assert_close(final, features)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("out_indices", [None, (1,), (0, 2)], ids=["default", "one", "two"])
def test_features_only_equals_forward_intermediates(name, out_indices):
    full = create(name, out_indices=all_outputs(name)).eval()
    kwargs = {} if out_indices is None else dict(out_indices=out_indices)
    features = create(name, features_only=True, **kwargs).eval()
    weights = full.state_dict()
    features.model.load_state_dict({k: weights[k] for k in features.model.state_dict()})
    indices = features.out_indices
    infos = [full.feature_info[i] for i in indices]
    assert features.feature_info.channels() == [info["num_chs"] for info in infos]
    assert features.feature_info.reduction() == [info["reduction"] for info in infos]
    x = images(full)
    with torch.no_grad():
        expected = full.forward_intermediates(x, indices=indices, intermediates_only=True)
        actual = features(x)
    assert len(actual) == len(expected)
    for a, b in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_outputs_the_model_was_not_built_for_are_a_clear_error(name):
    model = create(name).eval()  # a classifier: only forward's outputs are built
    with pytest.raises(ValueError, match=r"not part of this model.*create it with out_indices"):
        model.forward_intermediates(images(model))


# --------------------------------------------------------------------------- pretrained cfg
@pytest.mark.parametrize("name", MODELS)
def test_default_cfg_is_complete_and_consistent_with_the_model(name):
    model = create(name, num_classes=3)
    cfg = model.pretrained_cfg
    expected_keys = {
        "input_size", "min_input_size", "pool_size", "crop_pct", "crop_mode", "interpolation",
        "fixed_input_size", "mean", "std", "num_classes", "first_conv", "classifier", "license",
    }  # fmt: skip
    assert not [key for key in expected_keys if cfg.get(key) is None and key != "fixed_input_size"]
    assert cfg["input_size"][0] == model.in_chans
    assert cfg["min_input_size"][0] == model.in_chans
    assert cfg["num_classes"] == create(name).num_classes == 0
    assert len(cfg["mean"]) == len(cfg["std"]) == model.in_chans
    assert len(cfg["pool_size"]) == 2
    state = model.state_dict()
    assert f"{cfg['first_conv']}.weight" in state
    assert f"{cfg['classifier']}.weight" in state and f"{cfg['classifier']}.bias" in state
    assert model.get_submodule(cfg["classifier"]) is model.get_classifier()
    config = resolve_data_config(model=model)
    assert config["input_size"] == cfg["input_size"]
    create_transform(**config)


@pytest.mark.parametrize("name", MODELS)
def test_min_input_size_and_other_sizes_run(name):
    model = create(name).eval()
    cfg = model.pretrained_cfg
    stride = cfg["input_size"][1] // cfg["pool_size"][0]  # of forward_features' maps
    assert not cfg["fixed_input_size"]
    minimum = cfg["min_input_size"][1:]
    with torch.no_grad():
        for size in (minimum, (minimum[0] * 3 + 1, minimum[1] * 5 + 3)):
            features = model.forward_features(images(model, size))
            assert features.shape[-2:] == tuple(math.ceil(side / stride) for side in size)


@pytest.mark.parametrize("name", MODELS)
def test_feature_model_keeps_the_cfg_without_classifier_fields(name):
    features = create(name, features_only=True)
    cfg = features.pretrained_cfg
    assert cfg["input_size"] == timm.get_pretrained_cfg(name).input_size
    assert "classifier" not in cfg and "num_classes" not in cfg


# --------------------------------------------------------------------- export and compile
@pytest.fixture
def dynamo():
    yield
    torch._dynamo.reset()


def base_features() -> nn.Module:
    """geomim_base's architecture (windows 16/16/16/8, heads 4..32) at a test width and depth,
    as the detectors use it: features_only, stride-16 and stride-32 outputs."""
    return create("geomim_base", features_only=True).eval()


FIXED = torch.randn(2, 3, 72, 200, generator=torch.Generator().manual_seed(1))  # pads windows


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_torch_export_of_swin_features_matches_eager(window_attention_backend, backend):
    window_attention_backend(backend)
    model = base_features()
    with torch.no_grad():
        expected = model(FIXED)
    exported = torch.export.export(model, (FIXED,))
    with torch.no_grad():
        actual = exported.module()(FIXED)
    assert [t.shape for t in actual] == [(2, 128, 5, 13), (2, 256, 3, 7)]
    for a, b in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_torch_compile_fullgraph_of_swin_features_matches_eager(
    window_attention_backend, dynamo, backend
):
    window_attention_backend(backend)
    model = base_features()
    # aot_eager: dynamo's full graph and AOTAutograd without inductor's C++ build (slow on CPUs)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        expected = model(FIXED)
        actual = compiled(FIXED)
    for a, b in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_torch_export_and_compile_of_cva_vit_features_match_eager(dynamo):
    model = create("geomim_vit_small", features_only=True, num_views=2).eval()
    rig = torch.randn(1, 2, 3, 48, 80, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(rig)
        exported = torch.export.export(model, (rig,)).module()(rig)
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")(rig)
    for actual in (exported, compiled):
        for a, b in zip(actual, expected, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
