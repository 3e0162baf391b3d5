"""Official GeoMIM checkpoints to Hugging Face Hub folders, and their upload.

python -m geomim.hub convert geomim_base.pth ./geomim_base --variant geomim_base
python -m geomim.hub convert bevdet-geomim.pth ./bevdet_backbone --variant geomim_base
python -m geomim.hub push ./geomim_base your-org/geomim_base.nuscenes

`convert` takes the released backbone, a pretraining checkpoint, or a whole BEVDet / BEVDepth /
BEVFusion detector checkpoint, whose camera backbone it takes out (it reports what it dropped).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from geomim.architectures import SWIN_ARCHITECTURES as ARCHITECTURES

if TYPE_CHECKING:  # torch, timm and the converters load where used: `--help` answers at once
    import torch
    from torch import Tensor

    from geomim.models.swin_convert import BackboneSplit

WEIGHTS_NAME = "model.safetensors"


def convert_official(
    src: str | os.PathLike | Mapping[str, Tensor], variant: str
) -> dict[str, Tensor]:
    """Convert an official checkpoint (file or loaded dict: the released backbone, a pretraining
    or a BEVDet / BEVDepth / BEVFusion detector checkpoint) to `variant`'s keys.

    Raises `CheckpointError` listing every missing or unexpected key, or the wrong shapes.
    """
    return convert_swin_checkpoint(src, variant)[0]


def convert_swin_checkpoint(
    src: str | os.PathLike | Mapping[str, Tensor], variant: str
) -> tuple[dict[str, Tensor], BackboneSplit]:
    """`convert_official`, and where the camera backbone was in the checkpoint and what else it
    held (a detector's neck, view transform and heads; a pretraining decoder), left aside."""
    from geomim.checkpoints import read_checkpoint, unwrap_state_dict
    from geomim.models.swin_convert import split_backbone, swin_checkpoint_filter_fn

    state_dict = unwrap_state_dict(src) if isinstance(src, Mapping) else read_checkpoint(src)
    return swin_checkpoint_filter_fn(state_dict, _meta_model(variant)), split_backbone(state_dict)


def write_hub_folder(
    state_dict: Mapping[str, Tensor], variant: str, out_dir: str | os.PathLike, source: str
) -> Path:
    """Write model.safetensors, timm's config.json and a model card README.md into `out_dir`."""
    card = hub_model_card(variant, state_dict, source)
    return write_timm_folder(out_dir, state_dict, _meta_model(variant), variant, source, card)


def write_timm_folder(
    out_dir: str | os.PathLike,
    state_dict: Mapping[str, Tensor],
    model: torch.nn.Module,
    architecture: str,
    source: str,
    card: str,
    model_args: dict | None = None,
) -> Path:
    """The folder timm and the Hub load: model.safetensors (its metadata naming the architecture
    and the source), `model`'s config.json (`model_args` passed to timm on load) and `card` as
    README.md, each written atomically."""
    from timm.models._hub import save_config_for_hf

    from geomim.checkpoints import save_safetensors_atomic, write_atomic

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt", "architecture": architecture, "source": source}
    save_safetensors_atomic(dict(state_dict), out_dir / WEIGHTS_NAME, metadata=metadata)
    write_atomic(
        out_dir / "config.json", lambda path: save_config_for_hf(model, path, model_args=model_args)
    )
    write_atomic(out_dir / "README.md", lambda path: Path(path).write_text(card))
    return out_dir


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    revision: str | None = None,
    private: bool = False,
    token: str | None = None,
) -> str:
    """Create `repo_id` if needed and upload a `write_hub_folder` folder; returns the commit URL."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    missing = [n for n in (WEIGHTS_NAME, "config.json", "README.md") if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder} lacks {', '.join(missing)}: "
            "write it with `python -m geomim.hub convert` first"
        )
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        revision=revision,
        commit_message="Upload GeoMIM weights converted with geomim.hub",
    )
    return str(commit)


def hub_model_card(variant: str, state_dict: Mapping[str, Tensor], source: str) -> str:
    """The README.md placed beside converted weights."""
    arch = ARCHITECTURES[variant]
    dim = arch["embed_dim"]
    params = sum(t.numel() for k, t in state_dict.items() if not k.startswith("head."))
    return f"""---
library_name: timm
license: other
license_name: unspecified
tags: [geomim, image-feature-extraction, autonomous-driving, bev, nuscenes]
---
# {variant}

GeoMIM Swin encoder (embed dim {dim}, depths {list(arch["depths"])},
heads {list(arch["num_heads"])}, windows 16/16/16/8, never shifted) pretrained by masked image
modeling against a LiDAR model's BEV features on nuScenes ([arXiv:2303.11325](https://arxiv.org/abs/2303.11325)).
Converted with `geomim.hub` from `{source}`; {params:,} parameters.

```python
import geomim, timm
model = timm.create_model("hf-hub:<this repo>", pretrained=True)             # needs `import geomim`
features = timm.create_model("hf-hub:<this repo>", pretrained=True, features_only=True)
c4, c5 = features(images)  # images (B*N, 3, 256, 704) -> ({4 * dim}, /16), ({8 * dim}, /32)
```

Inputs: RGB, ImageNet mean/std normalisation, any size (256 x 704 in the paper).

**Licence**: the official GeoMIM repository (Sense-X/GeoMIM) declares no licence for its code or
weights. These converted weights carry that status: check with the authors before any use beyond
research. See MODEL_CARD.md in the geomim package for the training data, recipe and results.
"""


def _meta_model(variant: str) -> torch.nn.Module:
    """`variant` without storage, built for every output (so with every trained output norm)."""
    import timm
    import torch

    import geomim.models  # noqa: F401  (registers the variants: `python -m` imports them late)

    known = sorted(ARCHITECTURES)
    if variant not in ARCHITECTURES:
        raise ValueError(f"unknown variant {variant!r}: expected one of {known}")
    with torch.device("meta"):
        return timm.create_model(variant, out_indices=len(ARCHITECTURES[variant]["depths"]))


def main(argv: Sequence[str] | None = None) -> None:
    """The command line; a failure prints its message and exits with status 2 (a traceback
    too with --debug)."""
    parser = argparse.ArgumentParser(
        prog="python -m geomim.hub", description=__doc__.splitlines()[0]
    )
    debug_help = "show the traceback of a failure"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    # after the command too; SUPPRESS keeps a subcommand from resetting the flag given before it
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser(
        "convert", help="official or detector checkpoint -> Hub-ready folder", parents=[debug]
    )
    convert.add_argument(
        "src",
        help="official backbone, pretraining or BEVDet / BEVDepth / BEVFusion detector "
        "checkpoint (.pth or .safetensors)",
    )
    convert.add_argument("out_dir", help="folder for model.safetensors, config.json, README.md")
    convert.add_argument("--variant", required=True, choices=sorted(ARCHITECTURES))
    push = commands.add_parser(
        "push", help="upload a converted folder to the Hugging Face Hub", parents=[debug]
    )
    push.add_argument("folder")
    push.add_argument("repo_id", help="e.g. your-org/geomim_base.nuscenes")
    push.add_argument("--revision")
    push.add_argument("--private", action="store_true")
    push.add_argument("--token", help="defaults to the token of `hf auth login`")
    args = parser.parse_args(argv)
    try:
        _run(args)
    except (ValueError, OSError) as error:  # CheckpointError, missing files, the Hub's errors
        if args.debug:
            raise
        parser.exit(2, f"{parser.prog} {args.command}: error: {error}\n")


def _run(args: argparse.Namespace) -> None:
    if args.command == "convert":
        state_dict, split = convert_swin_checkpoint(args.src, args.variant)
        print(split.summary())
        folder = write_hub_folder(state_dict, args.variant, args.out_dir, Path(args.src).name)
        print(f"wrote {len(state_dict)} tensors for {args.variant} to {folder}")
    else:
        url = push_folder(args.folder, args.repo_id, args.revision, args.private, args.token)
        print(f"uploaded {args.folder} to {url}")


if __name__ == "__main__":
    main()
