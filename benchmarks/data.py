"""Data-loading benchmark: NuScenesMultiView on a synthetic nuScenes-format dataset.

Measures the loader's samples/s with 0 and 2 worker processes (training augmentation, batch 1,
collate included) on a small full-resolution set, and the start-up time of the dataset without and
with the cached index on a larger set of tiny images (start-up depends on the tables, not pixels).

    python benchmarks/data.py                        # 2 scenes x 8 samples, generated in a temp dir
    python benchmarks/data.py --dataroot DIR         # an existing (synthetic or real) dataset
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import machine_info, write_report
from torch.utils.data import DataLoader

from geomim.data import NuScenesMultiView, collate_multiview
from geomim.data.synthetic import generate


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataroot", type=Path, help="existing dataset (default: generate one)")
    parser.add_argument("--version", default="v1.0-mini")
    parser.add_argument("--scenes", type=int, default=2, help="scenes to generate")
    parser.add_argument("--samples-per-scene", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--startup-scenes", type=int, default=10, help="40 samples each")
    parser.add_argument("--repeats", type=int, default=3, help="start-up timings per mode")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/data.json"))
    return parser.parse_args()


def startup_seconds(dataroot: Path, version: str, cache_dir: Path | None) -> float:
    start = time.perf_counter()
    NuScenesMultiView(dataroot, version, split=None, cache_dir=cache_dir)
    return time.perf_counter() - start


def loader_rate(dataset: NuScenesMultiView, workers: int) -> float:
    """Samples per second over one epoch (worker start-up included)."""
    loader = DataLoader(dataset, batch_size=1, num_workers=workers, collate_fn=collate_multiview)
    start = time.perf_counter()
    count = sum(len(batch.tokens) for batch in loader)
    return count / (time.perf_counter() - start)


def startup(dataroot: Path, args: argparse.Namespace) -> dict[str, list[float]]:
    cache = dataroot / ".bench-cache"
    startup_seconds(dataroot, args.version, cache)  # fill the cache
    return {
        "no_cache": [startup_seconds(dataroot, args.version, None) for _ in range(args.repeats)],
        "cached": [startup_seconds(dataroot, args.version, cache) for _ in range(args.repeats)],
    }


def report(loader: dict[int, float], samples: int, start: dict, startup_samples: int) -> None:
    print(f"{'measure':<46} {'value':>10}")
    print("-" * 57)
    for workers, rate in loader.items():
        print(f"{f'samples/s, {workers} workers ({samples} samples)':<46} {rate:>10.2f}")
    for mode, label in (("no_cache", "without"), ("cached", "with")):
        name = f"start-up {label} index cache, s ({startup_samples} samples)"
        print(f"{name:<46} {statistics.median(start[mode]):>10.3f}")


def main() -> None:
    args = parse_args()
    info = machine_info()
    print(
        f"torch {info['torch']}, cpu capability {info['cpu_capability']}, threads {info['threads']}"
    )
    with tempfile.TemporaryDirectory() as scratch:
        dataroot, tables = args.dataroot, args.dataroot
        if dataroot is None:
            dataroot, tables = Path(scratch) / "full", Path(scratch) / "tables"
            start = time.perf_counter()
            generate(dataroot, args.scenes, args.samples_per_scene, progress=False)
            generate(tables, args.startup_scenes, 40, width=64, height=36, beams=2, progress=False)
            print(f"generated the synthetic sets in {time.perf_counter() - start:.1f} s")
        dataset = NuScenesMultiView(dataroot, args.version, split=None, cache_dir=None)
        rates = {workers: loader_rate(dataset, workers) for workers in args.workers}
        start_times = startup(tables, args)
        startup_samples = len(NuScenesMultiView(tables, args.version, split=None, cache_dir=None))
    report(rates, len(dataset), start_times, startup_samples)
    results = {
        "machine": info,
        "args": {**vars(args), "out": str(args.out), "dataroot": str(args.dataroot)},
        "loader_samples": len(dataset),
        "samples_per_s": {str(w): r for w, r in rates.items()},
        "startup_samples": startup_samples,
        "startup_s": start_times,
    }
    write_report(args.out, results, ok=True)


if __name__ == "__main__":
    main()
