"""CPU benchmark of Cross-View Attention against its per-row definition and full joint attention.

For each size, times the same `CrossViewAttention` block (same weights) three ways: `cva` (the
layer: rows across views, one batched block), `naive row loop` (the definition CVA is tested
against: per sample and row, gather that row of every view, run the plain block, scatter back)
and `joint attention` (the plain block over all views' tokens at once, quadratic in their count).
Round-robin timing, medians, attention FLOPs from `torch.utils.flop_counter`. Exits non-zero if
`cva` and the row loop differ by more than 1e-4.

    python benchmarks/cva.py                           # decoder and vit_base sizes, inference
    python benchmarks/cva.py --backward --repeats 3    # forward + backward
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
from common import machine_info, time_rounds, write_report
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from geomim.layers import CrossViewAttention

PARITY_TOL = 1e-4
REFERENCE = "cva"
ATTENTION_OPS = ("aten.bmm",)  # QK^T and AV on the explicit (non-fused) attention path


@dataclass(frozen=True)
class Size:
    """One benchmarked shape: a rig of `views` token maps of `height` x `width` x `dim`."""

    name: str
    views: int
    height: int
    width: int
    dim: int
    heads: int

    @property
    def tokens(self) -> int:
        """Tokens per sample over all views."""
        return self.views * self.height * self.width


SIZES = {
    size.name: size
    for size in (
        Size("decoder", views=6, height=16, width=44, dim=512, heads=16),  # GeoMIM decoder CVA
        Size("vit_base", views=6, height=16, width=44, dim=768, heads=12),
    )
}


def parse_args() -> argparse.Namespace:
    """The command line; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--batch", type=int, default=1, help="samples (rigs of views) per batch")
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cva.json"))
    parser.add_argument(
        "--backward", action="store_true", help="time forward + backward (default: inference)"
    )
    args = parser.parse_args()
    if args.repeats < 1 or args.warmup < 0 or args.batch < 1:
        parser.error("--repeats and --batch must be at least 1 and --warmup at least 0")
    return args


def seed_everything(seed: int = 0) -> None:
    """Python's and torch's generators."""
    random.seed(seed)
    torch.manual_seed(seed)


def build_inputs(size: Size, batch: int) -> tuple[CrossViewAttention, Tensor, Tensor]:
    """A fresh block (random init, eval mode), tokens (B*N, H*W, C) and an output gradient."""
    seed_everything(0)
    layer = CrossViewAttention(size.dim, size.heads, zero_init=False, num_views=size.views)
    layer.eval()
    shape = (batch * size.views, size.height * size.width, size.dim)
    x = torch.randn(shape)
    grad_out = torch.randn(shape)
    return layer, x, grad_out


def run_cva(layer: CrossViewAttention, x: Tensor, size: Size) -> Tensor:
    """The layer: every token attends to its image row in all views, one batched block."""
    return layer(x, (size.height, size.width), size.views)


def run_naive(layer: CrossViewAttention, x: Tensor, size: Size) -> Tensor:
    """The definition: per sample and row, concatenate that row of every view, run the block."""
    views, height, width, dim = size.views, size.height, size.width, size.dim
    maps = x.view(-1, views, height, width, dim)
    out = torch.empty_like(maps)
    for sample in range(maps.shape[0]):
        for row in range(height):
            sequence = maps[sample, :, row].reshape(1, views * width, dim)
            result = super(CrossViewAttention, layer).forward(sequence)
            out[sample, :, row] = result.view(views, width, dim)
    return out.view_as(x)


def run_joint(layer: CrossViewAttention, x: Tensor, size: Size) -> Tensor:
    """The plain block over every token of every view of a sample: (B, N*H*W, C)."""
    joint = x.reshape(-1, size.tokens, size.dim)
    return super(CrossViewAttention, layer).forward(joint).view_as(x)


METHODS: dict[str, Callable[[CrossViewAttention, Tensor, Size], Tensor]] = {
    REFERENCE: run_cva,
    "naive row loop": run_naive,
    "joint attention": run_joint,
}


def run_method(
    method: Callable[[CrossViewAttention, Tensor, Size], Tensor],
    layer: CrossViewAttention,
    x: Tensor,
    size: Size,
    grad_out: Tensor | None,
) -> tuple[Tensor, Tensor | None]:
    """Output and input gradient: inference mode, or forward + backward when `grad_out` is set."""
    if grad_out is None:
        with torch.inference_mode():
            return method(layer, x, size), None
    layer.zero_grad(set_to_none=True)
    inputs = x.detach().requires_grad_(True)
    out = method(layer, inputs, size)
    out.backward(grad_out)  # gradients of the input and every parameter
    return out.detach(), inputs.grad


def count_flops(
    method: Callable[[CrossViewAttention, Tensor, Size], Tensor],
    layer: CrossViewAttention,
    x: Tensor,
    size: Size,
    backward: bool,
) -> dict[str, int]:
    """Attention (QK^T, AV) and total FLOPs that FlopCounterMode counts for one run.

    Counted on a meta-device copy with the explicit attention path: FlopCounterMode has no
    formula for the CPU fused-attention kernel, and meta tensors allocate nothing, so joint
    attention's (N*H*W)^2 score matrix costs no memory here.
    """
    meta = copy.deepcopy(layer).to("meta")
    meta.attn.fused_attn = False
    inputs = x.to("meta")
    counter = FlopCounterMode(display=False)
    with counter:
        run_method(method, meta, inputs, size, torch.empty_like(inputs) if backward else None)
    ops = counter.get_flop_counts()["Global"]
    attention = sum(flops for op, flops in ops.items() if str(op) in ATTENTION_OPS)
    return {"attention": attention, "total": counter.get_total_flops()}


def max_abs_diff(a: Tensor | None, b: Tensor | None) -> float | None:
    """Largest elementwise difference (None where either side is missing)."""
    if a is None or b is None:
        return None
    return (a - b).abs().max().item()


def summarize(times: dict[str, list[float]], flops: dict[str, dict[str, int]]) -> dict[str, dict]:
    """Median ms, time relative to `cva`, FLOPs and achieved GFLOP/s per method."""
    reference_s = statistics.median(times[REFERENCE])
    results = {}
    for name, seconds in times.items():
        median_s = statistics.median(seconds)
        results[name] = {
            "seconds": seconds,
            "median_ms": 1e3 * median_s,
            "vs_cva": median_s / reference_s,
            "attention_flops": flops[name]["attention"],
            "total_flops": flops[name]["total"],
            "gflops_per_s": flops[name]["total"] / median_s / 1e9,
        }
    return results


def format_table(results: dict[str, dict[str, dict]]) -> str:
    """All sizes' results as aligned plain-text columns."""
    header = (
        f"{'size':<9} {'method':<16} {'median ms':>10} {'vs cva':>8} "
        f"{'attn GFLOP':>11} {'total GFLOP':>12} {'GFLOP/s':>8}"
    )
    lines = [header, "-" * len(header)]
    for size_name, rows in results.items():
        for name, row in rows.items():
            lines.append(
                f"{size_name:<9} {name:<16} {row['median_ms']:>10.1f} {row['vs_cva']:>7.2f}x "
                f"{row['attention_flops'] / 1e9:>11.2f} {row['total_flops'] / 1e9:>12.2f} "
                f"{row['gflops_per_s']:>8.1f}"
            )
    return "\n".join(lines)


def bench_size(size: Size, args: argparse.Namespace) -> tuple[dict[str, dict], dict]:
    """Time, count and check the three methods at one size."""
    layer, x, grad_out = build_inputs(size, args.batch)
    print(
        f"\n{size.name}: {args.batch} x {size.views} views x {size.height}x{size.width} tokens, "
        f"{size.dim} channels, {size.heads} heads ({x.shape[0]} x {x.shape[1]} x {x.shape[2]})"
    )
    grad = grad_out if args.backward else None
    flops = {
        name: count_flops(method, layer, x, size, args.backward) for name, method in METHODS.items()
    }
    jobs = {
        name: partial(run_method, method, layer, x, size, grad) for name, method in METHODS.items()
    }
    print(f"timing {len(jobs)} jobs: {args.warmup} warmup + {args.repeats} rounds")
    times, outputs = time_rounds(jobs, args.repeats, args.warmup)
    (cva_out, cva_grad), (naive_out, naive_grad) = outputs[REFERENCE], outputs["naive row loop"]
    parity = {
        "output_max_abs_diff": max_abs_diff(cva_out, naive_out),
        "input_grad_max_abs_diff": max_abs_diff(cva_grad, naive_grad),
    }
    return summarize(times, flops), parity


def main() -> None:
    args = parse_args()
    info = machine_info()
    for key in ("torch", "timm", "cpu", "cpu_capability", "threads"):
        print(f"{key}: {info[key]}")
    mode = "forward + backward" if args.backward else "inference (torch.inference_mode)"
    print(f"mode: {mode}")

    results, parity = {}, {}
    for name in args.sizes:
        results[name], parity[name] = bench_size(SIZES[name], args)

    print(f"\n{mode}, median over {args.repeats} rounds; vs cva = time / cva time")
    print("attn GFLOP: QK^T and AV matmuls (FlopCounterMode); total adds the linear layers\n")
    print(format_table(results))

    print(f"\nparity: cva vs naive row loop (max abs diff, tolerance {PARITY_TOL:g})")
    parity_ok = True
    for name, row in parity.items():
        checked = {key: value for key, value in row.items() if value is not None}
        ok = all(value <= PARITY_TOL for value in checked.values())
        parity_ok &= ok
        diffs = "  ".join(
            f"{key.removesuffix('_max_abs_diff')} {v:.3e}" for key, v in checked.items()
        )
        print(f"  {name:<9} {diffs}  {'OK' if ok else 'FAIL'}")

    report = {
        "machine": info,
        "args": {**vars(args), "out": str(args.out)},
        "mode": mode,
        "sizes": {name: asdict(SIZES[name]) for name in args.sizes},
        "results": results,
        "parity": parity,
        "parity_tol": PARITY_TOL,
        "parity_ok": parity_ok,
    }
    write_report(args.out, report, parity_ok)


if __name__ == "__main__":
    main()
