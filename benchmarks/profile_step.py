"""Where a CPU pretraining step spends its time: one step of a `pretrain_step.py` configuration
under torch.profiler, its ops by self time, and the share that is GEMM and convolution.

    python benchmarks/profile_step.py --isa avx2                  # the recipe default, base size
    python benchmarks/profile_step.py --config "base fp32, official formulation" --top 25
    python benchmarks/profile_step.py --config "tiny fp32" --out /tmp/profile.json

One untimed step first (allocations, caches), then one profiled step. Prints a table (op, calls,
self seconds, share, kind) and writes JSON (default benchmarks/results/profile_step.json).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from common import (
    ISA_ENVIRONMENT,
    add_malloc_argument,
    apply_malloc,
    machine_info,
    run_under_isa,
)
from pretrain_step import CONFIGS, TARGET_CONFIG, build_step

# ops whose self time is matrix products (BLAS / oneDNN): the part a faster GEMM would speed up
GEMM_OPS = {
    "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm",
    "aten::_addmm_activation", "aten::mkldnn_convolution", "aten::convolution_backward",
    "aten::_convolution", "aten::mkldnn_linear", "aten::_mkldnn_linear",
}  # fmt: skip
ATTENTION_OPS = ("scaled_dot_product", "flash_attention", "flex_attention")


def kind_of(name: str) -> str:
    """GEMM, attention (fused kernels: GEMMs and softmax together) or other."""
    if name.rstrip("_") in GEMM_OPS:  # in-place forms too (baddbmm_)
        return "GEMM"
    return "attention" if any(part in name for part in ATTENTION_OPS) else "other"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=TARGET_CONFIG, choices=sorted(CONFIGS))
    parser.add_argument("--isa", choices=sorted(ISA_ENVIRONMENT), help="emulate this ISA only")
    parser.add_argument("--points", type=int, default=200_000, help="LiDAR points per sample")
    parser.add_argument("--top", type=int, default=20, help="ops in the table")
    add_malloc_argument(parser, default="keep")  # as geomim.train; not for the official row
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/profile_step.json"))
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    emulation = run_under_isa(args.isa)
    info = machine_info() | {"isa_emulation": emulation}
    print(f"cpu capability {info['cpu_capability']}, {info['threads']} threads, {args.config}")
    info["keeps_freed_memory"] = not CONFIGS[args.config].official and apply_malloc(args.malloc)
    step, _ = build_step(CONFIGS[args.config], args.points)
    step()  # untimed: first-touch allocations and caches
    start = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        step()
    wall = time.perf_counter() - start
    events = [e for e in profile.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    rows = sorted(
        (
            {"op": e.key, "calls": e.count, "self_s": e.self_cpu_time_total / 1e6,
             "share": e.self_cpu_time_total / total, "kind": kind_of(e.key)}
            for e in events
        ),
        key=lambda row: -row["self_s"],
    )  # fmt: skip
    shares = {k: sum(r["share"] for r in rows if r["kind"] == k) for k in ("GEMM", "attention")}
    shares["other"] = 1 - sum(shares.values())
    print(f"\none step: {wall:.1f} s wall (profiled), {total / 1e6:.1f} s of op self time")
    print(f"{'op':<44} {'calls':>6} {'self s':>8} {'share':>7}  kind")
    for row in rows[: args.top]:
        print(
            f"{row['op'][:44]:<44} {row['calls']:>6} {row['self_s']:>8.2f} "
            f"{row['share']:>6.1%}  {row['kind']}"
        )
    print("self time by kind: " + ", ".join(f"{k} {v:.1%}" for k, v in shares.items()))
    if emulation:
        print(emulation)
    report = {"machine": info, "config": args.config, "wall_s": wall, "shares": shares}
    report["ops"] = rows
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
