"""Training-step benchmark of `geomim.train`: steps/s and peak memory, tiny and base, with and
without bf16 autocast, gradient checkpointing and torch.compile.

Each row runs `geomim.training.engine.train_step` (forward and backward over the micro-batch,
gradient clipping, AdamW, the schedule: exactly what a run does per step, data loading excluded)
on a real batch of a synthetic nuScenes-format dataset, in a fresh process (this script with
`--only ROW`) so that its peak memory is its own: peak RSS on CPU (`ru_maxrss` only ever grows),
`torch.cuda.max_memory_allocated` on GPU. `tiny` is `configs/tiny_synthetic.yaml` (6 x 64 x 176,
batch 2), `base` is `configs/swin_base.yaml` (Swin-B, 6 x 256 x 704, 1 sample per step; the
recipe's histogram stand-in teacher). The compile rows report the first (compiling) step apart.

    python benchmarks/train.py        # every row; writes benchmarks/results/train.json
    python benchmarks/train.py --sizes tiny --repeats 10
    python benchmarks/train.py --sizes base --variants fp32 bf16 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import machine_info, stream_child, time_rounds, write_report

from geomim.data import NuScenesMultiView, collate_multiview
from geomim.data.synthetic import generate
from geomim.training.config import TrainConfig, load_config
from geomim.training.distributed import DistributedContext, resolve_device
from geomim.training.engine import Training, prepare_model, train_step
from geomim.training.optim import build_optimizer, build_scheduler

RESULT_PREFIX = "TRAIN_BENCH_RESULT "
SIZES = {"tiny": ("tiny_synthetic", 2), "base": ("swin_base", 1)}  # config, samples per step
VARIANTS = {  # name: overrides on top of the config (grad checkpointing off unless named)
    "fp32": ["model.grad_checkpointing=false"],
    "bf16": ["model.grad_checkpointing=false", "train.precision=bf16"],
    "grad ckpt": ["model.grad_checkpointing=true"],
    "compile": ["model.grad_checkpointing=false", "train.compile=true"],
}


def parse_args() -> argparse.Namespace:
    """The command line; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per tiny row")
    parser.add_argument("--base-repeats", type=int, default=2, help="timed steps per base row")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--data", type=Path, help="synthetic dataset (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train.json"))
    parser.add_argument(
        "--row-timeout", type=float, default=1800, help="seconds before a row is stopped"
    )
    parser.add_argument("--only", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeats < 1 or args.base_repeats < 1 or args.warmup < 0:
        parser.error("repeats must be at least 1 and --warmup at least 0")
    return args


def row_config(size: str, variant: str, data: Path, device: str) -> TrainConfig:
    """The config of one row: the size's shipped config, one sample batch, the variant."""
    name, samples = SIZES[size]
    overrides = [
        f"data.root={data}",
        "data.version=v1.0-mini",
        "data.split=null",
        f"train.batch_size={samples}",
        f"train.micro_batch={samples}",
        f"train.device={device}",
        *VARIANTS[variant],
    ]
    return load_config(name, overrides)


def peak_memory_gib(device: torch.device) -> float:
    """Peak GPU memory allocated by torch, or this process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def run_only(size: str, variant: str, args: argparse.Namespace) -> dict:
    """Build model and optimizer, time `warmup` + `repeats` training steps of one row."""
    device = resolve_device(args.device)
    config = row_config(size, variant, args.data, device.type)
    height, width = config.model.view_transform.image_size
    data = NuScenesMultiView(
        args.data, "v1.0-mini", split=None, train=False, image_size=(width, height),
        cache_dir=None, points=config.data.points,
    )  # fmt: skip
    samples = config.train.micro_batch
    batch = collate_multiview([data[i % len(data)] for i in range(samples)])
    context = DistributedContext(rank=0, world_size=1, local_rank=0, device=device)
    start = time.perf_counter()
    model = prepare_model(config, context)
    optimizer = build_optimizer(model, config.optim)
    scheduler = build_scheduler(optimizer, 1000, config.optim)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    training = Training(model, optimizer, scheduler, scaler)
    build_s = time.perf_counter() - start

    def step() -> float:
        result = train_step(training, [batch], config, context)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return result.losses["total"]

    first_start = time.perf_counter()
    first_loss = step()  # compiles, for the compile rows
    first_s = time.perf_counter() - first_start
    repeats = args.repeats if size == "tiny" else args.base_repeats
    name = f"{size} {variant}"
    times, outputs = time_rounds({name: step}, repeats, max(0, args.warmup - 1))
    median = statistics.median(times[name])
    return {
        "row": name,
        "size": size,
        "variant": variant,
        "samples_per_step": samples,
        "image_size": [height, width],
        "params_m": sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
        "build_s": build_s,
        "first_step_s": first_s,
        "seconds": times[name],
        "median_s": median,
        "steps_per_s": 1 / median,
        "samples_per_s": samples / median,
        "peak_memory_gib": peak_memory_gib(device),
        "memory_kind": "GPU allocated" if device.type == "cuda" else "peak RSS",
        "first_loss": first_loss,
        "last_loss": outputs[name],
        "device": str(device),
    }


def run_child(size: str, variant: str, args: argparse.Namespace) -> dict:
    """This script with `--only` in a fresh process; its output streamed, its result parsed."""
    command = [
        sys.executable, str(Path(__file__).resolve()), "--only", f"{size}:{variant}",
        "--data", str(args.data), "--repeats", str(args.repeats),
        "--base-repeats", str(args.base_repeats), "--warmup", str(args.warmup),
        "--device", args.device,
    ]  # fmt: skip
    print(f"\n[{size} {variant}] fresh process", flush=True)
    result = stream_child(command, f"{size} {variant}", RESULT_PREFIX, args.row_timeout)
    if result is None:
        return {"row": f"{size} {variant}", "error": f"failed or over {args.row_timeout:g} s"}
    print(
        f"[{size} {variant}] {result['steps_per_s']:.3f} steps/s, first step "
        f"{result['first_step_s']:.1f} s, peak {result['peak_memory_gib']:.2f} GiB "
        f"({result['memory_kind']})"
    )
    return result


def print_table(rows: list[dict]) -> None:
    """Steps/s, samples/s, peak memory, and the speed relative to the size's fp32 row."""
    print("\n| row | steps/s | samples/s | vs fp32 | first step (s) | peak memory (GiB) |")
    print("|---|---|---|---|---|---|")
    baseline = {r["size"]: r["steps_per_s"] for r in rows if r.get("variant") == "fp32"}
    for row in rows:
        if "error" in row:
            print(f"| {row['row']} | failed: {row['error']} | | | | |")
            continue
        ratio = row["steps_per_s"] / baseline[row["size"]] if row["size"] in baseline else None
        print(
            f"| {row['row']} | {row['steps_per_s']:.3g} | {row['samples_per_s']:.3g} | "
            f"{f'{ratio:.2f}x' if ratio else '-'} | {row['first_step_s']:.1f} | "
            f"{row['peak_memory_gib']:.2f} ({row['memory_kind']}) |"
        )


def main() -> None:
    args = parse_args()
    if args.only:
        size, variant = args.only.split(":")
        print(RESULT_PREFIX + json.dumps(run_only(size, variant, args)), flush=True)
        return
    machine = machine_info()
    print(f"cpu capability: {torch.backends.cpu.get_cpu_capability()}, machine: {machine}")
    with tempfile.TemporaryDirectory() as temp:
        if args.data is None:
            args.data = Path(temp) / "synthetic-nuscenes"
            print(f"writing a 2-sample synthetic dataset (1600 x 900 cameras) to {args.data}")
            generate(args.data, scenes=1, samples_per_scene=2, sweeps_per_sample=1, progress=False)
        rows = []
        for size in args.sizes:
            for variant in args.variants:
                rows.append(run_child(size, variant, args))
                save_partial(args, machine, rows)  # an interrupted run keeps the rows it has
    print_table(rows)
    write_report(args.out, report(args, machine, rows), ok=all("error" not in r for r in rows))


def report(args: argparse.Namespace, machine: dict, rows: list[dict]) -> dict:
    """The JSON report: machine, arguments, one entry per row."""
    return {"machine": machine, "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}


def save_partial(args: argparse.Namespace, machine: dict, rows: list[dict]) -> None:
    """The rows so far, at the report's path (overwritten by the final report)."""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report(args, machine, rows), indent=2) + "\n")


if __name__ == "__main__":
    main()
