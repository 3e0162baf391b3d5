"""Registration with mmengine (mmdet3d 1.x) and mmcv-1.x-style registries (BEVDet, BEVDepth,
BEVFusion), config-dict builds equal to timm, and a clear error without any framework."""

from __future__ import annotations

import importlib
import subprocess
import sys
import types

import pytest
import timm
import torch

import geomim  # noqa: F401
from geomim.adapters import GeoMIMBackbone

FRAMEWORKS = ("mmengine", "mmcv", "mmdet", "mmdet3d")


class FakeMmcvRegistry:
    """What an mmcv-1.x `Registry` offers: `name`, `module_dict`, `register_module`, `build`.
    Like mmcv 1.x, `get` does not look into parent registries for unscoped names."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._module_dict: dict[str, type] = {}

    @property
    def module_dict(self) -> dict[str, type]:
        return self._module_dict

    def register_module(self, name=None, force=False, module=None):
        if not force and name in self._module_dict:
            raise KeyError(f"{name} is already registered in {self.name}")
        self._module_dict[name] = module
        return module

    def build(self, cfg: dict):
        args = dict(cfg)
        return self._module_dict[args.pop("type")](**args)


def fake_module(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    return module


@pytest.fixture
def mmcv1_frameworks(monkeypatch):
    """BEVDet's layout: mmdet 2.x's BACKBONES and mmdet3d 1.0rc's own, on mmcv 1.x."""
    registries = {
        "mmdet.models.builder": FakeMmcvRegistry("models"),
        "mmdet3d.models.builder": FakeMmcvRegistry("models"),
    }
    for name, registry in registries.items():
        monkeypatch.setitem(sys.modules, name, fake_module(name, BACKBONES=registry))
    return registries


def fresh_adapter(monkeypatch) -> types.ModuleType:
    """Import geomim.adapters.mmdet3d anew (its import registers), restored after the test."""
    monkeypatch.delitem(sys.modules, "geomim.adapters.mmdet3d", raising=False)
    return importlib.import_module("geomim.adapters.mmdet3d")


def test_core_imports_no_detector_framework():
    code = (
        "import sys, geomim, geomim.models, geomim.hub, geomim.adapters, geomim.pretrain, "
        "geomim.data; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FRAMEWORKS!r}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_import_without_any_framework_names_the_extra(monkeypatch):
    for name in [m for m in sys.modules if m.split(".")[0] in FRAMEWORKS]:
        monkeypatch.delitem(sys.modules, name)
    for name in FRAMEWORKS:
        monkeypatch.setitem(sys.modules, name, None)  # import of it fails as if not installed
    with pytest.raises(ImportError, match=r'pip install "geomim\[mmdet3d\]"'):
        fresh_adapter(monkeypatch)


def test_mmcv1_registries_get_the_backbone_and_build_it(monkeypatch, mmcv1_frameworks, bevdet_pth):
    adapter = fresh_adapter(monkeypatch)
    for registry in mmcv1_frameworks.values():
        assert registry.module_dict["GeoMIMBackbone"] is GeoMIMBackbone
        assert any(held is registry for held in adapter.REGISTRIES)
    # BEVDet's config: init_cfg Pretrained, drop path 0.2, a detector checkpoint as weights
    cfg = dict(
        type="GeoMIMBackbone",
        model_name="geomim_test",
        init_cfg=dict(type="Pretrained", checkpoint=str(bevdet_pth)),
        out_indices=(2, 3),
        drop_path_rate=0.2,
        with_cp=False,
    )
    backbone = mmcv1_frameworks["mmdet.models.builder"].build(cfg)
    assert isinstance(backbone, GeoMIMBackbone) and backbone.out_channels == [64, 128]


def test_a_registry_shared_by_two_frameworks_is_registered_once(monkeypatch):
    shared = FakeMmcvRegistry("models")  # BEVFusion: mmdet3d.models.builder re-exports mmdet's
    for name in ("mmdet.models.builder", "mmdet3d.models.builder"):
        monkeypatch.setitem(sys.modules, name, fake_module(name, BACKBONES=shared))
    adapter = fresh_adapter(monkeypatch)
    locations = [("mmdet.models.builder", "BACKBONES"), ("mmdet3d.models.builder", "BACKBONES")]
    assert adapter.find_registries(locations) == [shared]
    assert adapter.register([shared, shared]) == [shared, shared]  # twice: a no-op


def test_another_class_under_the_name_is_an_error(monkeypatch, mmcv1_frameworks):
    adapter = fresh_adapter(monkeypatch)
    other = FakeMmcvRegistry("models")
    other.register_module(name="GeoMIMBackbone", module=dict)
    with pytest.raises(
        KeyError,
        match=r"already builtins\.dict, expected geomim's geomim\.adapters\.backbone\.GeoMIM",
    ):
        adapter.register([other])


def test_a_framework_that_fails_to_import_is_not_silently_skipped(
    monkeypatch, tmp_path, mmcv1_frameworks
):
    adapter = fresh_adapter(monkeypatch)
    monkeypatch.setitem(sys.modules, "mmdet3d.registry", None)  # not installed: skipped
    assert adapter.find_registries([("mmdet3d.registry", "MODELS")]) == []
    package = tmp_path / "brokenframework"  # installed, but a dependency of it is missing
    package.mkdir()
    (package / "__init__.py").write_text("import a_missing_dependency_of_the_framework\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="a_missing_dependency_of_the_framework"):
        adapter.find_registries([("brokenframework.registry", "MODELS")])


# ------------------------------------------------------------------ mmengine (mmdet3d 1.x)
@pytest.fixture
def mmengine_models(monkeypatch):
    registry = pytest.importorskip("mmengine.registry")
    fresh_adapter(monkeypatch)
    return registry.MODELS


def test_mmengine_config_build_equals_timm_with_the_same_weights(mmengine_models, official_pth):
    from mmengine.registry import Registry

    # a downstream registry as mmdet3d 1.x declares its own: it finds the root's entries
    mmdet3d_models = Registry("model", parent=mmengine_models, scope="fake_mmdet3d")
    cfg = dict(
        type="GeoMIMBackbone",
        model_name="geomim_test",
        checkpoint=str(official_pth),
        out_indices=(2, 3),
        frozen_stages=-1,
        with_cp=False,
        drop_path_rate=0.0,
    )
    backbone = mmdet3d_models.build(cfg).eval()
    reference = timm.create_model(
        "geomim_test",
        pretrained=True,
        features_only=True,
        out_indices=(2, 3),
        pretrained_cfg_overlay=dict(file=str(official_pth)),
    ).eval()
    reference_weights = reference.state_dict()
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, reference_weights[key])  # both `model.`-prefixed
    images = torch.randn(2, 6, 3, 64, 176)
    with torch.no_grad():
        for ours, theirs in zip(backbone(images), reference(images), strict=True):
            assert torch.equal(ours, theirs)


def test_mmengine_build_freezes_stages(mmengine_models):
    backbone = mmengine_models.build(
        dict(type="GeoMIMBackbone", model_name="geomim_test", frozen_stages=1)
    )
    backbone.train()
    stage0 = backbone.model.stages[0]
    assert not stage0.training and not backbone.model.patch_embed.training
    assert backbone.model.stages[1].training
    assert not any(p.requires_grad for p in stage0.parameters())
    c4, c5 = backbone(torch.randn(1, 3, 64, 176))
    (c4.sum() + c5.sum()).backward()
    assert all(p.grad is None for p in stage0.parameters())
    assert backbone.model.stages[1].blocks[0].attn.qkv.weight.grad is not None


def test_mmdet3d_registry_gets_it_when_installed(mmengine_models):
    registry = pytest.importorskip("mmdet3d.registry")
    assert registry.MODELS.get("GeoMIMBackbone") is GeoMIMBackbone


def test_layer_decay_constructor_builds_an_mmengine_optimizer(mmengine_models):
    from mmengine.optim import build_optim_wrapper

    detector = torch.nn.Module()
    detector.img_backbone = GeoMIMBackbone("geomim_test")
    detector.img_neck = torch.nn.Conv2d(192, 8, 1)
    wrapper = build_optim_wrapper(
        detector,
        dict(
            type="OptimWrapper",
            optimizer=dict(type="AdamW", lr=2e-4, weight_decay=0.05),
            constructor="GeoMIMLayerDecayOptimizerConstructor",
            paramwise_cfg=dict(decay_rate=0.8),
        ),
    )
    swin = detector.img_backbone.model
    lrs = {id(p): g["lr"] for g in wrapper.optimizer.param_groups for p in g["params"]}
    assert lrs[id(swin.patch_embed.proj.weight)] == pytest.approx(2e-4 * 0.8**9)
    assert lrs[id(detector.img_neck.weight)] == pytest.approx(2e-4)


def test_layer_decay_constructor_registers_with_mmcv1(monkeypatch, mmcv1_frameworks):
    class DefaultOptimizerConstructor:  # mmcv 1.x's, reduced to what the subclass uses
        def __init__(self, optimizer_cfg, paramwise_cfg=None):
            self.optimizer_cfg, self.paramwise_cfg = optimizer_cfg, paramwise_cfg
            self.base_lr, self.base_wd = optimizer_cfg["lr"], optimizer_cfg.get("weight_decay")

        def __call__(self, model):
            params = []
            self.add_params(params, model)
            return torch.optim.AdamW(params, lr=self.base_lr)

    builders = FakeMmcvRegistry("optimizer builder")
    runner = fake_module(
        "mmcv.runner",
        OPTIMIZER_BUILDERS=builders,
        DefaultOptimizerConstructor=DefaultOptimizerConstructor,
    )
    monkeypatch.setitem(sys.modules, "mmcv.runner", runner)
    adapter = fresh_adapter(monkeypatch)
    assert any(registry is builders for registry in adapter.CONSTRUCTOR_REGISTRIES)
    constructor = builders.module_dict["GeoMIMLayerDecayOptimizerConstructor"](
        dict(type="AdamW", lr=1.0, weight_decay=0.05), dict(decay_rate=0.5, num_layers=8)
    )
    detector = torch.nn.Module()
    detector.img_backbone = GeoMIMBackbone("geomim_test")
    optimizer = constructor(detector)
    lrs = sorted({group["lr"] for group in optimizer.param_groups})
    assert lrs == pytest.approx([0.5**k for k in range(9, -1, -1)])
    bad = builders.module_dict["GeoMIMLayerDecayOptimizerConstructor"](
        dict(type="AdamW", lr=1.0),
        dict(layer_decay_rate=0.8),  # the fork's own key name
    )
    with pytest.raises(ValueError, match=r"expected paramwise_cfg=dict\(decay_rate=RATE"):
        bad(detector)
