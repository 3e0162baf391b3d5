"""Benchmark of the GeoMIM backbone: fast path vs the reference path, fp32 and bf16 autocast
(and TF32 on CUDA), on the CPU or a GPU (`--device cuda`).

Times `forward_intermediates(x, indices=(2, 3), intermediates_only=True)` on a multi-camera batch
for each configuration, round-robin so machine noise hits all alike, checks parity against the
reference fp32 outputs, and relates the achieved GFLOP/s to a square GEMM timed in the same
rounds. Exits non-zero only if the fast fp32 path drifts more than 1e-4 from the reference.

    python benchmarks/backbone.py                      # geomim_base, 6 x 3 x 256 x 704
    python benchmarks/backbone.py --model geomim_test --height 128 --width 352 --repeats 2
    python benchmarks/backbone.py --device cuda --batch 8   # 8 rigs of 6 cameras, images/s
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import timm
import torch
from common import (
    GEMM_SIZE,
    ISA_ENVIRONMENT,
    add_malloc_argument,
    apply_malloc,
    background_load,
    gemm_job,
    machine_info,
    run_under_isa,
    stream_child,
    time_rounds,
    write_report,
)
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

FP32_PARITY_TOL = 1e-4
TARGETS = {"geomim fp32": 1.4, "geomim bf16 autocast": 3.0}
REFERENCE = "reference fp32"
MEMORY_PREFIX = "PEAK_MEMORY_JSON "  # how a --memory-of child hands its figures back


@dataclass(frozen=True)
class Config:
    """One timed configuration: attention path and autocast dtype (None = plain fp32)."""

    name: str
    fused: bool
    autocast: torch.dtype | None = None
    tf32: bool = False  # CUDA: fp32 matmuls and convolutions on TF32 tensor cores

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the matmuls run in."""
        return self.autocast or torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.bfloat16` -> `bfloat16`."""
    return str(dtype).removeprefix("torch.")


def parse_args() -> argparse.Namespace:
    """The command line; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="geomim_base")
    parser.add_argument(
        "--isa", choices=sorted(ISA_ENVIRONMENT), help="emulate a CPU that has only this ISA"
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--batch", type=int, default=1, help="rigs per forward")
    parser.add_argument("--views", type=int, default=6)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=704)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/backbone.json"))
    parser.add_argument("--skip-bf16", action="store_true", help="time fp32 only")
    add_malloc_argument(parser, default="system")  # a user's process, for inference
    parser.add_argument(
        "--load", type=int, default=0, metavar="N",
        help="N busy processes running beside the timing (a shared machine)",
    )  # fmt: skip
    parser.add_argument(
        "--force-bf16", action="store_true", help="time bf16 even without native CPU support"
    )
    parser.add_argument(
        "--peak-memory", action="store_true",
        help="also measure each config's forward peak RSS, one fresh process per config (CPU)",
    )  # fmt: skip
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)  # the child of --peak-memory
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")
    if args.device == "cuda" and args.peak_memory:
        parser.error("--peak-memory reads the process's RSS: CPU only")
    if args.repeats < 1 or args.warmup < 0 or args.batch < 1:
        parser.error("--repeats must be at least 1 and --warmup at least 0")
    return args


def choose_configs(args: argparse.Namespace, native_bf16: bool) -> list[Config]:
    """fp32 reference and fast path (and TF32 on CUDA), plus both under bf16 autocast unless
    skipped or emulated."""
    configs = [Config(REFERENCE, fused=False), Config("geomim fp32", fused=True)]
    if args.device == "cuda":
        configs.append(Config("geomim tf32", fused=True, tf32=True))
    if args.skip_bf16:
        return configs
    if not native_bf16 and args.device == "cpu":
        print("WARNING: this CPU has no native bf16 (avx512_bf16 / amx_bf16): bf16 is emulated")
        print("         and will be very slow.", end=" ")
        if not args.force_bf16:
            print("Skipping bf16; pass --force-bf16 to time it anyway.")
            return configs
        print("Timing it anyway (--force-bf16).")
    return [
        *configs,
        Config("reference bf16 autocast", fused=False, autocast=torch.bfloat16),
        Config("geomim bf16 autocast", fused=True, autocast=torch.bfloat16),
    ]


def build_inputs(args: argparse.Namespace) -> tuple[nn.Module, Tensor]:
    """The model (random weights, eval mode) and the camera batch, both from seed 0."""
    torch.manual_seed(0)
    model = timm.create_model(args.model, out_indices=(2, 3)).eval().to(args.device)
    images = torch.randn(args.batch * args.views, 3, args.height, args.width)
    return model, images.to(args.device)


def run_config(model: nn.Module, images: Tensor, config: Config) -> list[Tensor]:
    """One backbone forward (stages 2 and 3) under `config`."""
    model.set_fused_attn(config.fused)
    autocast = (
        torch.autocast(images.device.type, dtype=config.autocast)
        if config.autocast is not None
        else contextlib.nullcontext()
    )
    with torch.inference_mode(), autocast, tf32(config.tf32):
        return model.forward_intermediates(images, indices=(2, 3), intermediates_only=True)


@contextlib.contextmanager
def tf32(enabled: bool):
    """CUDA matmuls and convolutions on TF32 inside the block (restored after)."""
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


def gemm_name(config: Config) -> str:
    """The precision the config's matmuls run in: float32, tf32 or bfloat16."""
    return "tf32" if config.tf32 else dtype_name(config.dtype)


def _under_tf32(job, enabled: bool):
    with tf32(enabled):
        return job()


def peak_rss_gib() -> float:
    """This process's peak RSS in GiB (`ru_maxrss` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def forward_memory(args: argparse.Namespace, config: Config) -> dict[str, float]:
    """In a fresh process: peak RSS after building the model and inputs, after one forward of
    `config`, and what the forward added (its activations and workspace)."""
    model, images = build_inputs(args)
    built = peak_rss_gib()
    run_config(model, images, config)
    peak = peak_rss_gib()
    return {"after_build_gib": built, "peak_gib": peak, "forward_gib": peak - built}


def measure_peak_memory(configs: list[Config]) -> dict[str, dict]:
    """`forward_memory` of every config, each in a fresh process run with this one's arguments
    (`ru_maxrss` only grows, and a child's starts from its parent's RSS: call this before the
    parent builds anything)."""
    results = {}
    for config in configs:
        command = [sys.executable, __file__, *sys.argv[1:], "--memory-of", config.name]
        result = stream_child(command, f"memory of {config.name}", MEMORY_PREFIX)
        if result is not None:
            results[config.name] = result
    return results


def compare(outputs: list[Tensor], reference: list[Tensor]) -> dict[str, list[float]]:
    """Per-output max abs diff vs `reference`, and that diff over the reference's max abs."""
    diffs, relative = [], []
    for out, ref in zip(outputs, reference, strict=True):
        diff = (out.float() - ref).abs().max().item()
        diffs.append(diff)
        relative.append(diff / ref.abs().max().item())
    return {"max_abs_diff": diffs, "rel_err": relative}


def count_flops(model: nn.Module, images: Tensor) -> int:
    """Forward FLOPs that FlopCounterMode counts (matmuls, convs) on the reference fp32 path."""
    counter = FlopCounterMode(display=False)
    with counter:
        run_config(model, images, Config(REFERENCE, fused=False))
    return counter.get_total_flops()


def summarize(
    configs: list[Config],
    times: dict[str, list[float]],
    flops: int,
    peaks: dict[str, float],
    images: int,
) -> dict[str, dict]:
    """Median seconds, speedup vs reference fp32, GFLOP/s and % of the same-dtype GEMM peak."""
    reference_s = statistics.median(times[REFERENCE])
    results = {}
    for config in configs:
        median_s = statistics.median(times[config.name])
        gflops = flops / median_s / 1e9
        peak = peaks[gemm_name(config)]
        results[config.name] = {
            "dtype": gemm_name(config),
            "images_per_s": images / median_s,
            "fused_attn": config.fused,
            "seconds": times[config.name],
            "median_s": median_s,
            "speedup": reference_s / median_s,
            "gflops": gflops,
            "pct_of_gemm_peak": 100 * gflops / peak,
        }
    return results


def format_table(results: dict[str, dict]) -> str:
    """The results as aligned plain-text columns."""
    header = (
        f"{'config':<24} {'median s':>9} {'images/s':>9} {'speedup':>8} {'GFLOP/s':>9} "
        f"{'% GEMM peak':>12}"
    )
    lines = [header, "-" * len(header)]
    for name, row in results.items():
        lines.append(
            f"{name:<24} {row['median_s']:>9.3f} {row['images_per_s']:>9.1f} "
            f"{row['speedup']:>7.2f}x {row['gflops']:>9.1f} {row['pct_of_gemm_peak']:>11.1f}%"
        )
    return "\n".join(lines)


def check_targets(results: dict[str, dict]) -> dict[str, dict]:
    """Each issue target (speedup over reference fp32) with PASS, MISS or SKIPPED."""
    verdicts = {}
    for name, target in TARGETS.items():
        if name not in results:
            verdicts[name] = {"target": target, "speedup": None, "status": "SKIPPED"}
            continue
        speedup = results[name]["speedup"]
        status = "PASS" if speedup >= target else "MISS"
        verdicts[name] = {"target": target, "speedup": speedup, "status": status}
    return verdicts


def print_report(
    results: dict[str, dict],
    parity: dict[str, dict],
    targets: dict[str, dict],
    flops: int,
    peaks: dict[str, float],
) -> None:
    """Table, parity against reference fp32, GEMM peaks and the issue's targets."""
    print(f"\nforward: {flops / 1e9:.1f} GFLOP (FlopCounterMode, reference fp32)")
    gemm = f"{GEMM_SIZE}x{GEMM_SIZE} matmul, median over rounds"
    for dtype, peak in peaks.items():
        print(f"GEMM peak {dtype}: {peak:.1f} GFLOP/s ({gemm})")
    print()
    print(format_table(results))
    print("\nparity vs reference fp32 (per output: stage 2, stage 3)")
    for name, row in parity.items():
        diffs = ", ".join(f"{d:.3e}" for d in row["max_abs_diff"])
        rels = ", ".join(f"{r:.3e}" for r in row["rel_err"])
        print(f"  {name:<24} max abs diff [{diffs}]  rel err [{rels}]")
    print("\ntargets (speedup over reference fp32; informational)")
    for name, row in targets.items():
        speedup = "-" if row["speedup"] is None else f"{row['speedup']:.2f}x"
        print(f"  {name:<24} >= {row['target']:.1f}x  got {speedup:>6}  {row['status']}")


def main() -> None:
    args = parse_args()
    emulation = run_under_isa(args.isa)
    info = machine_info() | {"isa_emulation": emulation}
    info["keeps_freed_memory"] = apply_malloc(args.malloc)
    if args.memory_of is not None:  # a child of --peak-memory: one forward, figures back
        configs = {config.name: config for config in choose_configs(args, info["native_bf16"])}
        print(MEMORY_PREFIX + json.dumps(forward_memory(args, configs[args.memory_of])))
        return
    for key in ("torch", "cpu", "cpu_capability", "threads", "bf16_flags"):
        print(f"{key}: {info[key]}")
    if args.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        print(f"gpu: {info['gpu']}")
    print(f"native bf16: {info['native_bf16']}")

    configs = choose_configs(args, info["native_bf16"])
    # before this process grows: a child's ru_maxrss starts from its parent's RSS at the fork
    memory = measure_peak_memory(configs) if args.peak_memory else {}
    model, images = build_inputs(args)
    print(f"\n{args.model} on {tuple(images.shape)}")
    flops = count_flops(model, images)

    jobs = {config.name: partial(run_config, model, images, config) for config in configs}
    gemms = {f"gemm {gemm_name(config)}": config for config in configs}
    for name, config in gemms.items():
        gemm = gemm_job(config.dtype, device=args.device)
        jobs[name] = lambda gemm=gemm, config=config: _under_tf32(gemm, config.tf32)
    print(f"timing {len(jobs)} jobs: {args.warmup} warmup + {args.repeats} rounds")
    if args.load:
        print(f"with {args.load} busy background process(es)")
    with background_load(args.load):
        times, outputs = time_rounds(jobs, args.repeats, args.warmup)
    gemm_flops = 2 * GEMM_SIZE**3
    peaks = {
        gemm_name(config): gemm_flops / statistics.median(times[name]) / 1e9
        for name, config in gemms.items()
    }
    results = summarize(configs, times, flops, peaks, len(images))
    reference = [out.float() for out in outputs[REFERENCE]]
    parity = {
        config.name: compare(outputs[config.name], reference)
        for config in configs
        if config.name != REFERENCE
    }
    targets = check_targets(results)
    print_report(results, parity, targets, flops, peaks)
    if memory:
        print("\npeak RSS per config (fresh process each; GiB)")
        for name, row in memory.items():
            print(
                f"  {name:<24} after build {row['after_build_gib']:.2f}  peak "
                f"{row['peak_gib']:.2f}  forward adds {row['forward_gib']:.2f}"
            )

    fp32_diff = max(parity["geomim fp32"]["max_abs_diff"])
    parity_ok = fp32_diff <= FP32_PARITY_TOL
    print(f"\nfp32 parity: max abs diff {fp32_diff:.3e} <= {FP32_PARITY_TOL:g}: {parity_ok}")

    report = {
        "machine": info,
        "args": {**vars(args), "out": str(args.out)},
        "input_shape": list(images.shape),
        "forward_flops": flops,
        "gemm": {
            "size": GEMM_SIZE,
            "seconds": {name: times[name] for name in gemms},
            "peak_gflops": peaks,
        },
        "results": results,
        "parity": parity,
        "fp32_parity_tol": FP32_PARITY_TOL,
        "fp32_parity_ok": parity_ok,
        "targets": targets,
        "peak_memory_gib": memory,
    }
    write_report(args.out, report, parity_ok)


if __name__ == "__main__":
    main()
