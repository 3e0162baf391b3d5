"""Data-loading benchmark: NuScenesMultiView on a synthetic nuScenes-format dataset.

Measures the start-up time of the dataset without and with the cached index, and the loader's
samples/s with 0 and 2 worker processes (training augmentation, batch 1, collate included).

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


def run(dataroot: Path, args: argparse.Namespace) -> dict:
    cache = dataroot / ".bench-cache"
    startup_seconds(dataroot, args.version, cache)  # fill the cache
    no_cache = [startup_seconds(dataroot, args.version, None) for _ in range(args.repeats)]
    cached = [startup_seconds(dataroot, args.version, cache) for _ in range(args.repeats)]
    dataset = NuScenesMultiView(dataroot, args.version, split=None, cache_dir=cache)
    rates = {workers: loader_rate(dataset, workers) for workers in args.workers}
    print(f"\n{len(dataset)} samples, {len(dataset.cameras)} cameras each, from {dataroot}")
    print(f"{'measure':<34} {'value':>10}")
    print("-" * 45)
    print(f"{'start-up without index cache (s)':<34} {statistics.median(no_cache):>10.3f}")
    print(f"{'start-up with index cache (s)':<34} {statistics.median(cached):>10.3f}")
    for workers, rate in rates.items():
        print(f"{f'samples/s, {workers} workers':<34} {rate:>10.2f}")
    return {
        "samples": len(dataset),
        "startup_no_cache_s": no_cache,
        "startup_cached_s": cached,
        "samples_per_s": {str(w): r for w, r in rates.items()},
    }


def main() -> None:
    args = parse_args()
    info = machine_info()
    print(
        f"torch {info['torch']}, cpu capability {info['cpu_capability']}, threads {info['threads']}"
    )
    with tempfile.TemporaryDirectory() as scratch:
        dataroot = args.dataroot
        if dataroot is None:
            dataroot = Path(scratch) / "synthetic"
            start = time.perf_counter()
            generate(dataroot, args.scenes, args.samples_per_scene, progress=False)
            print(f"generated {dataroot} in {time.perf_counter() - start:.1f} s")
        results = run(dataroot, args)
    report = {"machine": info, "args": {**vars(args), "out": str(args.out)}, **results}
    report["args"]["dataroot"] = str(args.dataroot)
    write_report(args.out, report, ok=True)


if __name__ == "__main__":
    main()
