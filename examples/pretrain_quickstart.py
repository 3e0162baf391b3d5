"""Pretraining quickstart: synthetic data -> GeoMIM pretraining on the CPU -> export -> timm.

    python examples/pretrain_quickstart.py                     # ./pretrain-quickstart, 300 steps
    python examples/pretrain_quickstart.py --out /tmp/qs --steps 100

1. writes a small synthetic nuScenes-format dataset (6 cameras, LiDAR, calibrations),
2. pretrains the tiny config (`geomim/configs/tiny_synthetic.yaml`: the geomim_test encoder,
   64 x 176 images, a histogram stand-in teacher) with `python -m geomim.train`'s code path,
3. exports the encoder with `python -m geomim.export`'s code path,
4. reloads it through `timm.create_model(..., pretrained=True)` and checks its features against
   the trained encoder's,
and prints where everything went. It exits non-zero if the loss did not fall.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("pretrain-quickstart"))
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps (batch 2)")
    parser.add_argument("--scenes", type=int, default=2, help="synthetic scenes of 8 samples")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded
    import timm
    import torch

    from geomim import export, train
    from geomim.data import CAMERAS, NuScenesMultiView, collate_multiview
    from geomim.data.synthetic import generate
    from geomim.training.metrics import read_metrics

    started = time.perf_counter()
    data_root, run_dir, exported = (
        args.out / "synthetic-nuscenes",
        args.out / "run",
        args.out / "exported",
    )
    if not (data_root / "v1.0-mini").is_dir():
        print(f"1/4 writing a synthetic nuScenes dataset to {data_root}")
        generate(
            data_root, scenes=args.scenes, samples_per_scene=8, sweeps_per_sample=0,
            width=400, height=225, beams=16, progress=not args.quiet,
        )  # fmt: skip
    else:
        print(f"1/4 reusing the synthetic dataset in {data_root}")
    for folder in (run_dir, exported):
        shutil.rmtree(folder, ignore_errors=True)  # this script's own outputs of an earlier run

    threads = torch.get_num_threads()
    print(f"2/4 pretraining the tiny config for {args.steps} steps on {threads} CPU threads")
    train.main(
        [
            "--config", "tiny_synthetic",
            f"data.root={data_root}", f"run_dir={run_dir}", f"train.max_steps={args.steps}",
            f"log.progress={not args.quiet}", f"log.panel_every={max(1, args.steps // 3)}",
        ]
    )  # fmt: skip
    records = read_metrics(run_dir)
    first, last = records[0], records[-1]

    print(f"3/4 exporting the encoder to {exported}")
    export.export_run(run_dir, exported)

    print("4/4 reloading it through timm and comparing features with the trained encoder")
    weights = exported / "model.safetensors"
    backbone = timm.create_model(
        "geomim_test", pretrained=True, features_only=True,
        pretrained_cfg_overlay=dict(file=str(weights)),
    ).eval()  # fmt: skip
    trained, config, _ = export.load_run_encoder(run_dir)
    height, width = config.model.view_transform.image_size
    data = NuScenesMultiView(
        data_root, "v1.0-mini", split=None, train=False, image_size=(width, height), cache_dir=None
    )
    images = collate_multiview([data[0]]).images  # (1, 6, 3, 64, 176), the six cameras
    with torch.no_grad():
        features = backbone(images)
        expected = trained.forward_intermediates(images, indices=(2, 3), intermediates_only=True)
    difference = max((a - b).abs().max().item() for a, b in zip(features, expected, strict=True))

    panels = sorted((run_dir / "panels").glob("*.png"))
    print()
    print(f"loss               steps {first['step']:>4} -> {last['step']}")
    for key, name in (("loss", "total"), ("loss_reconstruction", "reconstruction")):
        print(f"  {name:<16} {first[key]:.4f} -> {last[key]:.4f}")
    print(f"  {'depth':<16} {first['loss_depth']:.4f} -> {last['loss_depth']:.4f}")
    steps_per_s = statistics.median(r["steps_per_s"] for r in records)
    samples_per_s = statistics.median(r["samples_per_s"] for r in records)
    print(f"speed              {steps_per_s:.2f} steps/s, {samples_per_s:.1f} samples/s (median)")
    print(f"dataset            {data_root} ({len(data)} samples, cameras {', '.join(CAMERAS)})")
    print(f"run                {run_dir} (config.yaml, metrics.jsonl, checkpoints/)")
    print(f"panel              {panels[-1]}")
    print(f"exported backbone  {exported} (model.safetensors, config.json, README.md)")
    shapes = ", ".join(str(tuple(f.shape)) for f in features)
    print(f"timm features      {shapes}; max |difference| to the trained encoder {difference:.1e}")
    print(f"total time         {time.perf_counter() - started:.0f} s")
    print()
    print("load it yourself:")
    print("  import geomim, timm")
    print('  timm.create_model("geomim_test", pretrained=True, features_only=True,')
    print(f'                    pretrained_cfg_overlay=dict(file="{weights}"))')
    if not last["loss"] < first["loss"]:
        sys.exit(f"the loss did not fall ({first['loss']:.4f} -> {last['loss']:.4f})")
    if difference != 0:
        sys.exit(f"the reloaded backbone differs from the trained encoder by {difference}")


if __name__ == "__main__":
    main()
