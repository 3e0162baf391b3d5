"""Quickstart: build a GeoMIM backbone, load weights, run six camera images, print feature shapes.

    python examples/quickstart.py                            # Hub cache weights, else random
    python examples/quickstart.py --weights geomim_base.pth  # the official release, converted
    python examples/quickstart.py --images cam_*.jpg         # your own six camera images

Weights come from --weights (an official .pth or our model.safetensors) or from the local Hugging
Face cache (nothing is downloaded unless --download is given). Without either, the run says so
plainly and uses random weights: the shapes and timings are still meaningful, the features are not.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="geomim_base", help="geomim_base, geomim_large, ...")
    parser.add_argument("--weights", type=Path, help="official .pth or converted .safetensors")
    parser.add_argument("--images", type=Path, nargs=6, metavar="IMAGE", help="six camera images")
    parser.add_argument("--download", action="store_true", help="allow fetching from the Hub")
    parser.add_argument("--bf16", action="store_true", help="run under bfloat16 autocast")
    parser.add_argument("--device", default="cuda" if _cuda_available() else "cpu")
    return parser.parse_args()


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def build_model(name: str, weights: Path | None):
    """The backbone as a feature extractor (strides 16 and 32), with the best weights available."""
    import timm

    import geomim  # noqa: F401  (registers the GeoMIM models with timm)

    if weights is not None:
        overlay = dict(file=str(weights))
        model = timm.create_model(
            name, pretrained=True, features_only=True, pretrained_cfg_overlay=overlay
        )
        return model, f"weights from {weights}"
    try:
        model = timm.create_model(name, pretrained=True, features_only=True)
        return model, f"weights from the Hub ({model.pretrained_cfg['hf_hub_id']})"
    except FileNotFoundError as error:
        print(f"NOTE: {error}\n", file=sys.stderr)
        model = timm.create_model(name, features_only=True)
        return model, "RANDOM weights (no --weights given and none in the Hub cache)"


def load_images(paths: list[Path] | None, height: int, width: int):
    """(1, 6, 3, H, W) normalised images: the given files (test-time resize and crop) or noise."""
    import torch
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    if paths is None:
        print("images: six synthetic camera images (pass --images for real ones)")
        return torch.randn(1, 6, 3, height, width, generator=torch.Generator().manual_seed(0))
    from PIL import Image
    from torchvision.transforms.functional import normalize, to_tensor

    from geomim.data import CAMERAS  # the official camera order

    views = []
    for camera, path in zip(CAMERAS, paths, strict=True):
        image = Image.open(path).convert("RGB")
        # The official test-time augmentation: scale so the width covers the crop, keep the bottom.
        scale = max(width / image.width, height / image.height)
        resized = image.resize((round(image.width * scale), round(image.height * scale)))
        left = (resized.width - width) // 2
        crop = resized.crop((left, resized.height - height, left + width, resized.height))
        views.append(normalize(to_tensor(crop), IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD))
        print(f"images: {camera:<16} {path}")
    return torch.stack(views)[None]


def main() -> None:
    args = parse_args()
    if not args.download:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read the cache only; set before hub import
    import torch

    model, provenance = build_model(args.model, args.weights)
    model = model.eval().to(args.device)
    _, height, width = model.pretrained_cfg["input_size"]
    images = load_images(args.images, height, width).to(args.device)
    print(f"model: {args.model}, {provenance}")
    print(f"device: {args.device}, threads {torch.get_num_threads()}, ", end="")
    print(f"cpu capability {torch.backends.cpu.get_cpu_capability()}")

    dtype = torch.bfloat16 if args.bf16 else torch.float32
    with torch.inference_mode(), torch.autocast(args.device, dtype=dtype, enabled=args.bf16):
        model(images)  # warm-up
        start = time.perf_counter()
        features = model(images)
        if args.device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start

    print(f"input: {tuple(images.shape)} (batch, views, channels, height, width)")
    for info, feature in zip(model.feature_info.get_dicts(), features, strict=True):
        print(f"feature stride {info['reduction']:>2}: {tuple(feature.shape)}, {feature.dtype}")
    print(
        f"forward of {images.shape[1]} views: {seconds:.3f} s ({'bf16' if args.bf16 else 'fp32'})"
    )


if __name__ == "__main__":
    main()
