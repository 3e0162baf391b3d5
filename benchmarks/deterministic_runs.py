"""Is `train.deterministic=true` bit-exact on this device? Two runs of the tiny config in fresh
processes, compared metric by metric and weight by weight; then two runs without it, to show
what the setting buys (on a GPU, atomics make those differ; on a CPU, the scatter ops).

    python benchmarks/deterministic_runs.py --device cuda      # writes results/deterministic.json
    python benchmarks/deterministic_runs.py --device cpu --steps 2

Exit 1 when the deterministic pair differs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from common import machine_info, write_report
from safetensors.torch import load_file

from geomim.training.metrics import read_metrics


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per run")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "deterministic.json"
    )
    return parser.parse_args()


def run(run_dir: Path, args: argparse.Namespace, deterministic: bool) -> tuple[list, dict]:
    """One run of the tiny config in a fresh process: its metrics and final weights."""
    command = [
        sys.executable, "-m", "geomim.train", "--config", "tiny_synthetic", "data.source=rig",
        "data.rig_samples=8", "data.workers=0", f"train.max_steps={args.steps}",
        f"train.device={args.device}", f"train.precision={args.precision}",
        f"train.deterministic={str(deterministic).lower()}", "log.every=1",
        "log.progress=false", "log.tensorboard=false", f"run_dir={run_dir}",
    ]  # fmt: skip
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    records = [{k: v for k, v in r.items() if "per_s" not in k} for r in read_metrics(run_dir)]
    weights = load_file(run_dir / "checkpoints" / f"step-{args.steps:08d}" / "model.safetensors")
    return records, weights


def compare(first: tuple[list, dict], second: tuple[list, dict]) -> dict:
    """Bit-identical metrics and weights? With the largest weight difference and the first
    step whose metrics differ."""
    differing = [a["step"] for a, b in zip(first[0], second[0], strict=True) if a != b]
    weight_diff = max(
        (first[1][name].double() - second[1][name].double()).abs().max().item() for name in first[1]
    )
    identical = not differing and all(torch.equal(first[1][n], second[1][n]) for n in first[1])
    return {
        "identical": identical,
        "first_differing_step": differing[0] if differing else None,
        "max_weight_difference": weight_diff,
    }


def main() -> None:
    args = parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as scratch:
        for deterministic in (True, False):
            pair = [
                run(Path(scratch) / f"{deterministic}-{k}", args, deterministic) for k in (0, 1)
            ]
            rows["deterministic" if deterministic else "default"] = compare(*pair)
    print(
        f"{'train.deterministic':<20} {'bit-identical':>13} {'1st diff step':>13} {'max |dw|':>10}"
    )
    for name, row in rows.items():
        first = row["first_differing_step"] or "-"
        print(
            f"{name:<20} {row['identical']!s:>13} {first!s:>13} "
            f"{row['max_weight_difference']:>10.2e}"
        )
    ok = rows["deterministic"]["identical"]
    report = {"machine": machine_info(), "device": args.device, "steps": args.steps, **rows}
    write_report(args.out, report, ok)


if __name__ == "__main__":
    main()
