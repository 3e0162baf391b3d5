"""Building registered backbones through timm, with our weight loading and error messages: the
builder, the pretrained-cfg template, and the checks of constructor arguments."""

from __future__ import annotations

import math
import socket
from collections.abc import Callable, Sequence
from functools import partial
from numbers import Integral, Real
from urllib.parse import urlparse

from huggingface_hub import constants, try_to_load_from_cache
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg
from timm.models._builder import _resolve_pretrained_source, resolve_pretrained_cfg
from torch import Tensor, nn

FilterFn = Callable[[dict[str, Tensor], nn.Module], dict[str, Tensor]]
OutIndices = int | Sequence[int] | None


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

    `out_indices` also reaches the model, which builds only the outputs they need besides
    forward's own (with `features_only`, `default_out_indices` unless given; without, none).
    A weight file given as `pretrained_cfg_overlay=dict(file=...)` goes through the model's
    `load_pretrained` (our reader: official mmcv checkpoints, clear errors for bad files); weights
    that cannot be found raise `FileNotFoundError` saying `how_to_get_weights`.
    """
    out_indices = kwargs.pop("out_indices", None)
    if kwargs.get("features_only") and out_indices is None:
        out_indices = tuple(default_out_indices)
    overlay = kwargs.get("pretrained_cfg_overlay")
    if overlay and "file" in overlay:
        kwargs["pretrained_cfg_overlay"] = {"custom_load": True, **overlay}
    elif pretrained:
        cfg = resolve_pretrained_cfg(variant, kwargs.get("pretrained_cfg"), overlay).to_dict()
        from_hub = _resolve_pretrained_source(cfg)[0] == "hf-hub"  # not a state_dict, url, dir
        reason = hub_weights_unreachable(cfg) if from_hub else None
        if reason is not None:
            raise FileNotFoundError(
                f"no pretrained weights for {variant!r}: {reason}.\n"
                + how_to_get_weights.format(variant=variant)
            )
    try:
        return build_model_with_cfg(
            partial(model_cls, out_indices=out_indices),
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
        ) from None  # one error, not the chain of HTTP exceptions behind it


def hub_weights_unreachable(cfg: dict, timeout_s: float = 3.0) -> str | None:
    """Why a pretrained cfg's Hub weights cannot be had right now, at once rather than after
    huggingface_hub's retries (None: they are in the local cache, or the Hub answers)."""
    hub_id = cfg.get("hf_hub_id")
    if not hub_id:
        return "the model names no Hugging Face Hub repository"
    repo, _, revision = hub_id.partition("@")
    filename = cfg.get("hf_hub_filename") or "model.safetensors"
    if isinstance(try_to_load_from_cache(repo, filename, revision=revision or None), str):
        return None
    where = f"{filename} of {hub_id} is not in the local Hugging Face cache"
    if constants.HF_HUB_OFFLINE:
        return f"{where} and HF_HUB_OFFLINE is set"
    host = urlparse(constants.ENDPOINT).hostname or constants.ENDPOINT
    port = urlparse(constants.ENDPOINT).port or 443
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as error:
        return f"{where} and the Hub ({host}) cannot be reached: {error}"
    return None


def backbone_cfg(
    input_size: tuple[int, int, int], feature_stride: int, min_side: int, **overrides
) -> dict:
    """timm's pretrained cfg of a GeoMIM backbone (as timm's `_cfg`, every field set): images of
    `input_size`, `forward_features` maps at `feature_stride` (sides rounded up, hence
    `pool_size`), any image of at least `min_side` pixels a side."""
    _, height, width = input_size
    cfg = dict(
        hf_hub_filename="model.safetensors",
        custom_load="hf",
        num_classes=0,
        input_size=input_size,
        min_input_size=(input_size[0], min_side, min_side),
        pool_size=(math.ceil(height / feature_stride), math.ceil(width / feature_stride)),
        crop_pct=1.0,
        crop_mode="center",
        interpolation="bicubic",
        fixed_input_size=False,
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        first_conv="patch_embed.proj",
        classifier="head.fc",
        paper_ids="arXiv:2303.11325",
    )
    cfg.update(overrides)
    return cfg


def init_linear_weights(module: nn.Module) -> None:
    """Truncated-normal (std 0.02) Linear weights and zero biases, as timm's transformers."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# ------------------------------------------------------------------------- argument checks
def check_int(name: str, value: object, low: int = 1, high: int | None = None) -> None:
    """Raise `ValueError` unless `value` is an integer in [low, high] (no upper bound if None)."""
    valid = f"[{low}, {high}]" if high is not None else f">= {low}"
    if not _is_int(value) or value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be an integer {valid}, got {value!r}")


def check_ints(name: str, values: object, count: int | None = None, low: int = 1) -> None:
    """Raise `ValueError` unless `values` is a sequence (of `count` entries) of integers >= low."""
    if not isinstance(values, Sequence) or isinstance(values, str):
        raise ValueError(f"{name} must be a sequence of integers, got {values!r}")
    if count is not None and len(values) != count:
        raise ValueError(f"{name} must have {count} entries, got {len(values)}: {list(values)}")
    if not all(_is_int(v) and v >= low for v in values):
        raise ValueError(f"{name} entries must be integers >= {low}, got {list(values)}")


def check_real(name: str, value: object, low: float, high: float | None = None) -> None:
    """Raise `ValueError` unless `value` is a number in [low, high] (if `high`) or > low."""
    valid = f"in [{low}, {high}]" if high is not None else f"> {low}"
    if (
        not isinstance(value, Real)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or (value < low if high is not None else value <= low)
        or (high is not None and value > high)
    ):
        raise ValueError(f"{name} must be a number {valid}, got {value!r}")


def check_rate(name: str, value: object) -> None:
    """Raise `ValueError` unless `value` is a probability: a number in [0, 1]."""
    check_real(name, value, 0.0, 1.0)


def check_indices(name: str, indices: OutIndices, count: int, what: str) -> list[int]:
    """timm's output indices (the last n if an int, negatives from the end) as sorted indices
    into `count` `what`s, or a `ValueError` naming `name`; None gives []."""
    if indices is None:
        return []
    if _is_int(indices):
        if not 1 <= indices <= count:
            raise ValueError(
                f"{name} as an int takes the last n {what}s: expected 1..{count}, got {indices}"
            )
        return list(range(count - indices, count))
    if not isinstance(indices, Sequence) or not all(_is_int(i) for i in indices):
        raise ValueError(f"{name} must be an int or a sequence of ints, got {indices!r}")
    wrong = [i for i in indices if not -count <= i < count]
    if wrong:
        raise ValueError(
            f"{name} {list(indices)} must index {what}s 0..{count - 1} (or -{count}..-1 from "
            f"the end), got {wrong[0]}"
        )
    return sorted({i % count for i in indices})


def _is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)
