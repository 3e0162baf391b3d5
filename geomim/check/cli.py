"""The command line of `python -m geomim.check` (also `geomim-check`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

OPS = ("window_attention", "row_attention", "splat", "bev_pool")
BACKEND_NAMES = ("triton", "flex", "chunked", "sdpa", "sparse", "index_add", "reference")
EPILOG = """\
examples:
  python -m geomim.check                      # every check on CUDA if there is a GPU, else CPU
  python -m geomim.check --device cpu --quick # tiny shapes, under a minute on 2 CPU cores
  python -m geomim.check --ops window_attention --json check.json
  python -m geomim.check --backends triton    # only our Triton kernels (and the steps)

Exit status 0 when everything checked passed, 1 when something failed (each failure is named
with its op / backend / dtype, with the GEOMIM_KERNELS setting that avoids it), 2 on bad usage.
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options; parsed before torch is imported, so --help is instant."""
    parser = argparse.ArgumentParser(
        prog="python -m geomim.check",
        description="Check every geomim kernel on this machine against its reference: errors "
        "per op, backend and dtype, times at geomim_base's real shapes, the LiDAR teacher on "
        "the device, and one tiny pretraining step per backend.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), help="where to check (default: cuda if available)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny shapes (the Triton interpreter runs on the "
        "CPU with TRITON_INTERPRET=1); real geomim_base shapes otherwise",
    )  # fmt: skip
    parser.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS), help="ops to check")
    parser.add_argument(
        "--backends", nargs="+", choices=BACKEND_NAMES, metavar="NAME",
        help=f"backends to check, where an op has them (default: every usable one; "
        f"{', '.join(BACKEND_NAMES)})",
    )  # fmt: skip
    parser.add_argument("--skip-teacher", action="store_true", help="no sparse-encoder check")
    parser.add_argument("--skip-steps", action="store_true", help="no pretraining-step check")
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed runs per backend (default 3; 0, no timing, with --quick)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the whole report here")
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 0:
        parser.error("--repeats must be 0 (no timing) or more")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the check; 0 if everything passed, 1 if anything failed."""
    args = parse_args(argv)
    import torch

    from geomim.check.runner import CheckOptions, run_check

    if args.device == "cuda" and not torch.cuda.is_available():
        print("geomim.check: --device cuda, but torch sees no CUDA device", file=sys.stderr)
        return 2
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    options = CheckOptions(
        device=device,
        quick=args.quick,
        ops=tuple(args.ops),
        backends=None if args.backends is None else tuple(args.backends),
        teacher=not args.skip_teacher,
        steps=not args.skip_steps,
        repeats=(0 if args.quick else 3) if args.repeats is None else args.repeats,
    )
    report = run_check(options, say=lambda line: print(line, flush=True))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 1 if report["failed"] else 0
