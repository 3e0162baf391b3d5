"""Building registered backbones through timm, with our weight loading and error messages."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg
from torch import Tensor, nn

FilterFn = Callable[[dict[str, Tensor], nn.Module], dict[str, Tensor]]


def create_backbone(
    model_cls: type[nn.Module],
    variant: str,
    pretrained: bool,
    filter_fn: FilterFn,
    how_to_get_weights: str,
    default_out_indices: Sequence[int],
    **kwargs,
) -> nn.Module:
    """timm's `build_model_with_cfg` with `features_only` through `forward_intermediates`.

    A weight file given as `pretrained_cfg_overlay=dict(file=...)` goes through the model's
    `load_pretrained` (our reader: official mmcv checkpoints, clear errors for bad files); weights
    that cannot be found raise `FileNotFoundError` saying `how_to_get_weights`.
    """
    out_indices = kwargs.pop("out_indices", default_out_indices)
    overlay = kwargs.get("pretrained_cfg_overlay")
    if overlay and "file" in overlay:
        kwargs["pretrained_cfg_overlay"] = {"custom_load": True, **overlay}
    try:
        return build_model_with_cfg(
            model_cls,
            variant,
            pretrained,
            pretrained_filter_fn=filter_fn,
            feature_cfg=dict(feature_cls="getter", out_indices=out_indices),
            **kwargs,
        )
    except (FileNotFoundError, EntryNotFoundError, HfHubHTTPError) as error:
        raise FileNotFoundError(
            f"no pretrained weights for {variant!r} could be loaded ({error}).\n"
            + how_to_get_weights.format(variant=variant)
        ) from error


def init_linear_weights(module: nn.Module) -> None:
    """Truncated-normal (std 0.02) Linear weights and zero biases, as timm's transformers."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
