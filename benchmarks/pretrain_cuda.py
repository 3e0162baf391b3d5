"""GPU benchmark of the GeoMIM pretraining step: bf16 autocast, batch 1 and the largest batch
that fits, step time, peak memory and model FLOP utilisation (MFU) from the counted FLOPs.

Each batch size (1, 2, 4, ... until the GPU runs out of memory or `--max-batch`) runs `--warmup`
untimed and `--repeats` timed training steps (forward + backward + AdamW, random weights, random
rig batches of 6 x 3 x 256 x 704 with their LiDAR depth maps, the histogram stand-in teacher).
MFU = the step's matmul and convolution FLOPs (`FlopCounterMode`, recompute included) over its
time, against the GPU's datasheet bf16 peak and against a large bf16 matmul timed in this run.

    python benchmarks/pretrain_cuda.py      # writes benchmarks/results/pretrain_cuda.json
    python benchmarks/pretrain_cuda.py --size tiny --device cpu --max-batch 2   # a CPU dry run
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
from dataclasses import replace
from pathlib import Path

import torch
from common import gemm_job, gpu_peaks, machine_info, time_rounds, write_report
from pretrain_step import pretrain_config
from torch.utils.flop_counter import FlopCounterMode

from geomim.data.rig import OFFICIAL_IMAGE_SIZE, rig_batch
from geomim.pretrain.masking import complementary_masks
from geomim.pretrain.model import GeoMIMPretrainer
from geomim.pretrain.teacher import HistogramTeacher

MFU_TARGET = 0.30  # of the datasheet bf16 peak, base step in bf16 on an H100/H200
MATMUL_SIZE = 8192


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--size", default="base", choices=("base", "tiny"))
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    parser.add_argument("--grad-checkpointing", choices=("recipe", "on", "off"), default="recipe")
    parser.add_argument("--max-batch", type=int, default=64, help="largest batch size tried")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--points", type=int, default=200_000, help="LiDAR points per sample")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/pretrain_cuda.json"))
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")
    if min(args.max_batch, args.repeats) < 1 or args.warmup < 0:
        parser.error("--max-batch and --repeats must be at least 1, --warmup at least 0")
    return args


def build(args: argparse.Namespace) -> tuple[GeoMIMPretrainer, torch.optim.Optimizer]:
    """The recipe's pretrainer (random weights, seed 0) on the device and its AdamW."""
    config = pretrain_config(args.size)
    if args.grad_checkpointing != "recipe":
        config = replace(config, grad_checkpointing=args.grad_checkpointing == "on")
    torch.manual_seed(0)
    model = GeoMIMPretrainer(config, HistogramTeacher()).to(args.device).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.05)


def run_batch_size(args, model, optimizer, batch_size: int) -> dict:
    """Time steps at one batch size; its step FLOPs and peak memory."""
    height, width = OFFICIAL_IMAGE_SIZE
    batch = rig_batch(batch_size, num_points=args.points).to(args.device)
    masks = complementary_masks(
        (math.ceil(height / 32), math.ceil(width / 32)), generator=torch.Generator().manual_seed(0)
    ).to(args.device)
    precision = torch.bfloat16 if args.precision == "bf16" else None

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        autocast = (
            torch.autocast(args.device, dtype=precision) if precision else contextlib.nullcontext()
        )
        with autocast:
            loss = model(batch, masks).losses["total"]
        loss.backward()
        optimizer.step()
        return loss.item()

    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, outputs = time_rounds({f"batch {batch_size}": step}, args.repeats, args.warmup)
    peak_gib = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else None
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    median_s = statistics.median(times[f"batch {batch_size}"])
    return {
        "batch_size": batch_size,
        "seconds": times[f"batch {batch_size}"],
        "median_s": median_s,
        "samples_per_s": batch_size / median_s,
        "peak_memory_gib": peak_gib,
        "step_flop": counter.get_total_flops(),
        "achieved_flop_s": counter.get_total_flops() / median_s,
        "last_loss": outputs[f"batch {batch_size}"],
    }


def matmul_rate(args: argparse.Namespace) -> float:
    """FLOP/s of a large matmul in the step's precision on the device (best of 5)."""
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    size = MATMUL_SIZE if args.device == "cuda" else 1024
    times, _ = time_rounds({"matmul": gemm_job(dtype, size, args.device)}, 5, warmup=2)
    return 2 * size**3 / min(times["matmul"])


def main() -> None:
    args = parse_args()
    info = machine_info()
    if args.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    print(f"{info.get('gpu', info['cpu'])}: {args.size} pretraining step, {args.precision}")
    model, optimizer = build(args)
    rows, batch_size, stopped = [], 1, "max batch reached"
    while batch_size <= args.max_batch:
        print(f"\nbatch {batch_size}", flush=True)
        try:
            rows.append(run_batch_size(args, model, optimizer, batch_size))
        except torch.OutOfMemoryError:
            stopped = f"batch {batch_size} ran out of GPU memory"
            optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            break
        batch_size *= 2
    peak = gpu_peaks(info.get("gpu", ""))
    measured = matmul_rate(args)
    print(f"\n{args.size} step, {args.precision}: {stopped}; {MATMUL_SIZE}^3 matmul "
          f"{measured / 1e12:.1f} TFLOP/s")  # fmt: skip
    header = f"{'batch':>5} {'step s':>8} {'samples/s':>10} {'peak GiB':>9} {'TFLOP/s':>8}"
    header += f" {'MFU (datasheet)':>16} {'of matmul':>10}"
    print(header + "\n" + "-" * len(header))
    for row in rows:
        row["mfu_datasheet"] = row["achieved_flop_s"] / peak[0] if peak else None
        row["of_measured_matmul"] = row["achieved_flop_s"] / measured
        memory = "-" if row["peak_memory_gib"] is None else f"{row['peak_memory_gib']:.1f}"
        mfu = "-" if row["mfu_datasheet"] is None else f"{100 * row['mfu_datasheet']:.1f}%"
        print(
            f"{row['batch_size']:>5} {row['median_s']:>8.3f} {row['samples_per_s']:>10.2f} "
            f"{memory:>9} {row['achieved_flop_s'] / 1e12:>8.1f} {mfu:>16} "
            f"{100 * row['of_measured_matmul']:>9.1f}%"
        )
    best = max((r["mfu_datasheet"] or 0 for r in rows), default=0)
    if peak and args.size == "base" and args.precision == "bf16":
        verdict = "PASS" if best >= MFU_TARGET else "MISS"
        print(f"target: MFU >= {MFU_TARGET:.0%} of the datasheet bf16 peak: {best:.1%} {verdict}")
    report = {
        "machine": info,
        "args": {**vars(args), "out": str(args.out)},
        "stopped": stopped,
        "matmul_flop_s": measured,
        "datasheet_peaks": peak,
        "rows": rows,
    }
    ok = bool(rows) and all(math.isfinite(r["last_loss"]) for r in rows)
    write_report(args.out, report, ok)


if __name__ == "__main__":
    main()
