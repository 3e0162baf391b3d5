"""Deployment latency: `geomim_base` (random weights, features_only) exported to ONNX and run by
onnxruntime on the CPU, against eager PyTorch fp32 on its default backends and on the plain ops
the export traces, in one run (round-robin, so machine noise hits all alike).

    python benchmarks/deploy.py                  # writes benchmarks/results/deploy.json
    python benchmarks/deploy.py --model geomim_test --height 64 --width 176 --repeats 1
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import onnxruntime
import timm
import torch
from common import machine_info, time_rounds, write_report

from geomim.deploy import plain_ops, to_onnx

TOLERANCE = 1e-4


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="geomim_base")
    parser.add_argument("--views", type=int, default=6)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=704)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/deploy.json"))
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    info = machine_info()
    print(f"{info['cpu']} ({info['cpu_capability']}), {info['threads']} threads")
    torch.manual_seed(0)
    backbone = timm.create_model(args.model, features_only=True).eval()
    images = torch.randn(1, args.views, 3, args.height, args.width)
    with tempfile.TemporaryDirectory() as folder:
        report = to_onnx(backbone, Path(folder) / "model.onnx", (args.height, args.width))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = onnxruntime.InferenceSession(
            str(report.path), options, providers=["CPUExecutionProvider"]
        )
    feed = {session.get_inputs()[0].name: images.numpy()}

    def eager(plain: bool) -> list[torch.Tensor]:
        with torch.inference_mode():
            if plain:
                with plain_ops(backbone):
                    return backbone(images)
            return backbone(images)

    jobs = {
        "onnxruntime (CPU)": lambda: [torch.from_numpy(o) for o in session.run(None, feed)],
        "eager fp32, default backends": lambda: eager(False),
        "eager fp32, the exported plain ops": lambda: eager(True),
    }
    times, outputs = time_rounds(jobs, args.repeats, args.warmup)
    reference = outputs["eager fp32, the exported plain ops"]
    error = max(
        (ours - ref).abs().max().item()
        for ours, ref in zip(outputs["onnxruntime (CPU)"], reference, strict=True)
    )
    base = statistics.median(times["eager fp32, default backends"])
    print(f"\n{args.model}, 1 rig of {args.views} x 3 x {args.height} x {args.width}, fp32")
    print(f"{'runtime':<36} {'median s':>9} {'vs eager default':>17}")
    rows = {}
    for name, values in times.items():
        median = statistics.median(values)
        rows[name] = {"seconds": values, "median_s": median, "vs_eager_default": base / median}
        print(f"{name:<36} {median:>9.3f} {base / median:>16.2f}x")
    print(f"onnxruntime vs eager (plain ops): max abs diff {error:.1e} (tolerance {TOLERANCE:g})")
    result = {
        "machine": info,
        "args": {**vars(args), "out": str(args.out)},
        "onnxruntime": onnxruntime.__version__,
        "export_check_error": report.max_abs_error,
        "max_abs_diff": error,
        "results": rows,
    }
    write_report(args.out, result, error <= TOLERANCE)


if __name__ == "__main__":
    main()
