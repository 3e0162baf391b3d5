"""`GeoMIMBackbone`: a GeoMIM timm model behind the backbone interface of mmdet-style detectors.

Plain PyTorch: images in, a tuple of stage maps out, mmdet's `frozen_stages` and `with_cp`
arguments. `geomim.adapters.mmdet3d` registers it in the detector frameworks' registries; it can
also be used directly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import timm
import torch
from torch import Tensor, nn

from geomim.models.swin import GeoMIMSwin


class GeoMIMBackbone(nn.Module):
    """A GeoMIM backbone as BEVDet, BEVDepth, BEVFusion and mmdet3d detectors build one.

    Args:
        model_name: a GeoMIM timm model (`geomim_base`, `geomim_large`, `geomim_test`,
            `geomim_vit_*`).
        pretrained: load the model's published weights through the Hugging Face Hub.
        checkpoint: a weight file instead: the official release, a pretraining checkpoint, a
            BEVDet / BEVDepth / BEVFusion detector checkpoint (camera backbone taken out), or our
            safetensors.
        out_indices: the stages whose maps are returned (Swin: 0..3 at strides 4, 8, 16, 32;
            CVA-ViT: 0..2 at 8, 16, 32); default: the stride-16 and stride-32 maps.
        frozen_stages: as mmdet's Swin: -1 trains everything; 0 freezes the patch embedding and
            the position embedding; k >= 1 also stages 0..k-1 and their output norms. Frozen
            parts get no gradients and stay in eval mode through `.train()`.
        with_cp: gradient checkpointing of every block.
        drop_path_rate: stochastic depth (0.2 in the official BEVDet fine-tuning).
        init_cfg: mmcv / mmengine's `dict(type="Pretrained", checkpoint=PATH)`, the same as
            `checkpoint=PATH`.
        **model_kwargs: passed on to `timm.create_model` (e.g. `cva_stages`, `num_views`).

    Weights load at construction, so the module equals
    `timm.create_model(model_name, features_only=True, out_indices=..., ...)` with them.
    """

    def __init__(
        self,
        model_name: str = "geomim_base",
        pretrained: bool | None = False,
        checkpoint: str | os.PathLike | None = None,
        out_indices: Sequence[int] | None = None,
        frozen_stages: int = -1,
        with_cp: bool = False,
        drop_path_rate: float = 0.0,
        init_cfg: Mapping | None = None,
        **model_kwargs,
    ) -> None:
        super().__init__()
        if not isinstance(pretrained, bool | None):
            raise TypeError(
                f"pretrained must be True or False, got {pretrained!r}; "
                "pass a weight file as checkpoint=PATH"
            )
        checkpoint = _checkpoint_from_init_cfg(init_cfg, checkpoint)
        if checkpoint is not None:
            model_kwargs["pretrained_cfg_overlay"] = dict(file=os.fspath(checkpoint))
        if out_indices is None:
            out_indices = _bev_outputs(model_name, model_kwargs)
        self.model = timm.create_model(
            model_name,
            pretrained=bool(pretrained) or checkpoint is not None,
            drop_path_rate=drop_path_rate,
            out_indices=tuple(out_indices),
            **model_kwargs,
        )
        # Keep only what the requested outputs need (as timm's features_only does).
        self.out_indices = tuple(self.model.prune_intermediate_layers(out_indices))
        self.feature_info = [self.model.feature_info[i] for i in self.out_indices]
        self.out_channels = [info["num_chs"] for info in self.feature_info]
        self.model.set_grad_checkpointing(with_cp)
        self.frozen_stages = frozen_stages
        self._frozen = _frozen_parts(self.model, frozen_stages, model_name)
        for part in self._frozen:
            for parameter in _parameters_of(part):
                parameter.requires_grad_(False)
        self.train()

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        """(B*N, 3, H, W) or (B, N, 3, H, W) images -> one map per out index (view axis kept)."""
        features = self.model.forward_intermediates(
            images, indices=self.out_indices, intermediates_only=True
        )
        return tuple(features)

    def init_weights(self) -> None:
        """Nothing to do: the weights load at construction (mmcv-style detectors call this)."""

    def train(self, mode: bool = True) -> GeoMIMBackbone:
        """Set the training mode; frozen stages stay in eval mode."""
        super().train(mode)
        for part in self._frozen:
            if isinstance(part, nn.Module):
                part.eval()
        return self


def _checkpoint_from_init_cfg(
    init_cfg: Mapping | None, checkpoint: str | os.PathLike | None
) -> str | os.PathLike | None:
    """The weight file named by `checkpoint` or by an mmcv-style Pretrained `init_cfg`."""
    if init_cfg is None:
        return checkpoint
    if (
        not isinstance(init_cfg, Mapping)
        or init_cfg.get("type") != "Pretrained"
        or set(init_cfg) - {"type", "checkpoint"}
        or "checkpoint" not in init_cfg
    ):
        raise ValueError(
            f"expected init_cfg=dict(type='Pretrained', checkpoint=PATH), got {init_cfg!r}"
        )
    if checkpoint is not None and os.fspath(checkpoint) != os.fspath(init_cfg["checkpoint"]):
        raise ValueError(
            f"checkpoint={checkpoint!r} and init_cfg checkpoint {init_cfg['checkpoint']!r} "
            "disagree: give one of them"
        )
    return init_cfg["checkpoint"]


def _frozen_parts(model: nn.Module, frozen_stages: int, model_name: str) -> list:
    """The modules and parameters that `frozen_stages` freezes (mmdet's Swin convention)."""
    if frozen_stages < 0:
        return []
    if not isinstance(model, GeoMIMSwin):
        raise ValueError(
            f"frozen_stages is defined for the GeoMIM Swin models; {model_name} "
            f"({type(model).__name__}) has no stages: expected frozen_stages=-1, "
            f"got {frozen_stages}"
        )
    num_stages = len(model.stages)
    if frozen_stages > num_stages:
        raise ValueError(
            f"frozen_stages must be in -1..{num_stages} for the {num_stages} stages the "
            f"outputs need, got {frozen_stages}"
        )
    parts: list = [model.patch_embed, model.absolute_pos_embed]
    for index in range(frozen_stages):
        parts.append(model.stages[index])
        if str(index) in model.stage_norms:
            parts.append(model.stage_norms[str(index)])
    return parts


def _parameters_of(part: nn.Module | nn.Parameter) -> list[nn.Parameter]:
    return [part] if isinstance(part, nn.Parameter) else list(part.parameters())


def _bev_outputs(model_name: str, model_kwargs: dict) -> list[int]:
    """The indices of the stride-16 and stride-32 outputs the BEV necks take, read from the
    model's feature_info (built on the meta device: no memory, no weights)."""
    kwargs = {k: v for k, v in model_kwargs.items() if k != "pretrained_cfg_overlay"}
    with torch.device("meta"):
        reductions = [
            info["reduction"] for info in timm.create_model(model_name, **kwargs).feature_info
        ]
    return [reductions.index(16), reductions.index(32)]
