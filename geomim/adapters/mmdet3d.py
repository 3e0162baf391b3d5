"""Registers `GeoMIMBackbone` with mmdet3d / mmdet / mmengine, and with the mmcv-1.x registries
that BEVDet, BEVDepth and BEVFusion build their camera backbones from; and the optimizer
constructor `GeoMIMLayerDecayOptimizerConstructor` (the official layer-wise learning-rate decay)
with mmengine's and mmcv 1.x's.

In a config (mmdet3d 1.x and the mmcv-1.x frameworks alike):

    custom_imports = dict(imports=["geomim.adapters.mmdet3d"], allow_failed_imports=False)
    img_backbone = dict(type="GeoMIMBackbone", model_name="geomim_base",
                        checkpoint="geomim_base.pth", out_indices=(2, 3))
    optimizer = dict(type="AdamW", lr=2e-4, weight_decay=0.05,  # optim_wrapper=dict(...) in 1.x
                     constructor="GeoMIMLayerDecayOptimizerConstructor",
                     paramwise_cfg=dict(decay_rate=0.8, num_layers=24))

Importing this module needs mmengine (`pip install "geomim[mmdet3d]"`) or an mmcv-1.x framework;
the rest of geomim never imports either.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable

from geomim.adapters.backbone import GeoMIMBackbone
from geomim.adapters.layer_decay import layer_decay_param_groups

# (module, attribute) of every registry a detector framework may build its backbone from.
REGISTRY_LOCATIONS = (
    ("mmengine.registry", "MODELS"),  # the root: mmdet3d 1.x / mmdet 3.x find it from theirs
    ("mmdet3d.registry", "MODELS"),  # mmdet3d 1.x
    ("mmdet.registry", "MODELS"),  # mmdet 3.x
    ("mmdet.models.builder", "BACKBONES"),  # mmcv 1.x: mmdet 2.x, so BEVDepth and BEVFusion
    ("mmdet3d.models.builder", "BACKBONES"),  # mmcv 1.x: mmdet3d 1.0rc (BEVDet) or 0.x
)
# (registry module, registry, base-class module, base class) of the optimizer constructors.
CONSTRUCTOR_LOCATIONS = (
    (
        "mmengine.registry",
        "OPTIM_WRAPPER_CONSTRUCTORS",
        "mmengine.optim",
        "DefaultOptimWrapperConstructor",
    ),
    ("mmcv.runner", "OPTIMIZER_BUILDERS", "mmcv.runner", "DefaultOptimizerConstructor"),  # 1.x
)
NAME = "GeoMIMBackbone"
CONSTRUCTOR_NAME = "GeoMIMLayerDecayOptimizerConstructor"
INSTALL_HINT = (
    "geomim.adapters.mmdet3d registers GeoMIMBackbone in the model registries of mmengine "
    "(mmdet3d 1.x, mmdet 3.x) or of mmdet / mmdet3d on mmcv 1.x (BEVDet, BEVDepth, BEVFusion), "
    'and none of them is installed: pip install "geomim[mmdet3d]" (mmengine), or import it in '
    "the environment of your detector framework"
)


def find_registries(locations: Iterable[tuple[str, str]] = REGISTRY_LOCATIONS) -> list:
    """The registries among `locations` whose packages are installed, each once."""
    found = []
    for module_name, attribute in locations:
        registry = _installed(module_name, attribute)
        if registry is not None and all(registry is not known for known in found):
            found.append(registry)
    return found


def register(registries: Iterable, module: type = GeoMIMBackbone, name: str = NAME) -> list:
    """Register `module` under `name` in each registry (mmengine's or mmcv-1.x's `Registry`);
    returns the registries that now hold it. Registering twice is a no-op."""
    holding = []
    for registry in registries:
        existing = registry.module_dict.get(name)
        if existing is None:
            registry.register_module(name=name, module=module)
        elif _origin(existing) != _origin(module):  # a re-import makes a new, equal class
            raise KeyError(
                f"{name} in registry {registry.name!r} is already {_origin(existing)}, "
                f"expected geomim's {_origin(module)}"
            )
        holding.append(registry)
    return holding


def layer_decay_constructor(base: type) -> type:
    """`base` (mmengine's DefaultOptimWrapperConstructor or mmcv 1.x's
    DefaultOptimizerConstructor) building its parameter groups with `layer_decay_param_groups`;
    `paramwise_cfg=dict(decay_rate=..., num_layers=...)`."""

    class GeoMIMLayerDecayOptimizerConstructor(base):
        """Layer-wise learning-rate decay over the GeoMIMBackbones of the model."""

        def add_params(self, params: list, module, **kwargs) -> None:
            options = dict(self.paramwise_cfg)
            if "decay_rate" not in options or set(options) - {"decay_rate", "num_layers"}:
                raise ValueError(
                    "expected paramwise_cfg=dict(decay_rate=RATE[, num_layers=N]), "
                    f"got {self.paramwise_cfg!r}"
                )
            params.extend(
                layer_decay_param_groups(module, self.base_lr, self.base_wd or 0.0, **options)
            )

    return GeoMIMLayerDecayOptimizerConstructor


def register_constructors(
    locations: Iterable[tuple[str, str, str, str]] = CONSTRUCTOR_LOCATIONS,
) -> list:
    """Register a `GeoMIMLayerDecayOptimizerConstructor` with each installed framework."""
    holding = []
    for registry_module, registry_name, base_module, base_name in locations:
        registry = _installed(registry_module, registry_name)
        base = _installed(base_module, base_name)
        if registry is not None and base is not None:
            holding += register([registry], layer_decay_constructor(base), CONSTRUCTOR_NAME)
    return holding


def _origin(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _installed(module_name: str, attribute: str):
    """`module_name.attribute`, or None where that module is not installed."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        # Only the absence of that module (or of its package) means "not this framework";
        # a framework that fails to import for another reason should say so.
        missing = error.name or ""
        if not (module_name == missing or module_name.startswith(missing + ".")):
            raise
        return None
    return getattr(module, attribute, None)


REGISTRIES = register(find_registries())
if not REGISTRIES:
    raise ImportError(INSTALL_HINT)
CONSTRUCTOR_REGISTRIES = register_constructors()

__all__ = [
    "CONSTRUCTOR_REGISTRIES",
    "REGISTRIES",
    "GeoMIMBackbone",
    "find_registries",
    "layer_decay_constructor",
    "register",
    "register_constructors",
]
