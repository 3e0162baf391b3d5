"""What `geomim.check` reports besides the ops: the environment, the LiDAR teacher's sparse
encoder on the device against its CPU result, and one tiny pretraining step per backend."""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import os
import platform
import time
from pathlib import Path

import timm
import torch

from geomim.check.compare import Result, median_seconds, relative_error
from geomim.data.rig import rig_batch
from geomim.kernels import set_backend
from geomim.kernels.dispatch import ENVIRONMENT_VARIABLE, usable_backends
from geomim.pretrain.decoder import DecoderConfig
from geomim.pretrain.masking import complementary_masks
from geomim.pretrain.model import GeoMIMPretrainer, PretrainConfig
from geomim.pretrain.teacher import HistogramTeacher
from geomim.pretrain.view_transform import ViewTransformConfig

STEP_OPS = ("window_attention", "row_attention", "splat")  # what the pretrainer calls
STEP_TOLERANCE = 1e-4  # relative, on the loss and on the gradient norm (fp32)
BF16_STEP_TOLERANCE = 5e-2  # the same under bf16 autocast, against the fp32 step
TEACHER_TOLERANCE = 1e-3  # relative, device vs CPU (cuDNN-free sparse GEMMs, other orders)
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def environment(device: torch.device) -> dict[str, str]:
    """The versions and hardware facts that decide which kernels can run."""
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda (torch build)": str(torch.version.cuda),
        "device": str(device),
        "timm": timm.__version__,
        "triton": _version("triton"),
        "spconv": _spconv_build(),
        "cpu capability": torch.backends.cpu.get_cpu_capability(),
        "cpu native bf16": str(native_cpu_bf16()),
        "threads": str(torch.get_num_threads()),
        ENVIRONMENT_VARIABLE: os.environ.get(ENVIRONMENT_VARIABLE, "(unset)"),
        "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "(unset)"),
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info["gpu"] = properties.name
        info["gpu capability"] = f"sm_{properties.major}{properties.minor}"
        info["gpu memory"] = f"{properties.total_memory / 2**30:.0f} GiB"
    return info


def native_cpu_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (elsewhere it is emulated, ~100x slower): its
    flags say so and ATen runs its AVX-512 kernels (not under ATEN_CPU_CAPABILITY=avx2)."""
    if torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "NO AVX", "AVX2"):
        return False
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return any(flag in flags.split() for flag in BF16_FLAGS)


def check_teacher(device: torch.device, quick: bool, repeats: int) -> Result:
    """The teacher's sparse encoder (random weights, random voxels) on `device` against CPU."""
    from geomim.lidar.sparse_encoder import SparseEncoder, SparseEncoderConfig, spconv_supports

    shape = (40, 40, 41) if quick else (1440, 1440, 41)
    voxels = 300 if quick else 40_000
    label = f"{voxels} voxels in {'x'.join(map(str, shape))}"
    result = Result(
        "lidar_teacher", "spconv", "float32", label, "skip", tolerance=TEACHER_TOLERANCE
    )
    if importlib.util.find_spec("spconv") is None:
        result.note = 'spconv is not installed: pip install "geomim[lidar]" (CPU) or spconv-cuXXX'
        return result
    if not spconv_supports(device):
        result.note = f"this spconv build has no {device.type} kernels: install spconv-cuXXX"
        return result
    generator = torch.Generator().manual_seed(4)
    cells = torch.stack([torch.randint(0, n, (voxels,), generator=generator) for n in shape], 1)
    coords = torch.cat([torch.zeros(voxels, 1, dtype=torch.long), cells], 1).unique(dim=0)
    features = torch.randn(len(coords), 5, generator=generator)
    torch.manual_seed(0)
    encoder = SparseEncoder(SparseEncoderConfig(sparse_shape=shape)).eval()
    try:
        with torch.no_grad():
            start = time.perf_counter()
            expected = encoder(features, coords, 1)
            if device.type == "cpu":  # the reference device itself: timed only
                result.status, result.note = "pass", "the CPU is the reference device: timed only"
                result.forward_ms = 1e3 * (time.perf_counter() - start)
                return result
            ours = copy.deepcopy(encoder).to(device)
            on_device = features.to(device), coords.to(device)
            output = ours(*on_device, 1)
            result.forward_error = relative_error(output.cpu(), expected)
            if repeats:
                result.forward_ms = 1e3 * median_seconds(lambda: ours(*on_device, 1), repeats)
    except torch.OutOfMemoryError:
        raise
    except Exception as error:
        result.status, result.note = "fail", f"{type(error).__name__}: {error}"
        return result
    result.status = "pass" if result.forward_error <= TEACHER_TOLERANCE else "fail"
    return result


def check_pretraining_steps(
    device: torch.device,
    quick: bool,
    backends: dict,
    dtypes: tuple[torch.dtype, ...] = (torch.float32,),
) -> list[Result]:
    """One forward + backward of a tiny pretrainer per backend of each op it calls, the others on
    their defaults, against the same step with every op on its reference in fp32; in bf16
    (autocast, as `train.precision=bf16`) the all-reference step is checked too, within
    `BF16_STEP_TOLERANCE` of fp32 (a NaN or inf anywhere fails)."""
    config = tiny_pretrain_config((64, 176) if quick else (128, 352))
    batch = rig_batch(1, config.view_transform.image_size, num_points=20_000).to(device)
    height, width = config.view_transform.image_size
    generator = torch.Generator().manual_seed(5)
    masks = complementary_masks((-(-height // 32), -(-width // 32)), generator=generator)
    masks = masks.to(device)
    torch.manual_seed(0)
    model = GeoMIMPretrainer(config, HistogramTeacher(8, 32, 51.2)).to(device).train()
    shape = f"tiny pretrainer, 1 x 6 x 3 x {height} x {width}"
    try:
        expected = _step(model, batch, masks, dict.fromkeys(STEP_OPS, "reference"))
    except Exception as error:
        note = f"the all-reference step failed: {type(error).__name__}: {error}"
        return [Result("pretraining_step", "reference", "float32", shape, "fail", note=note)]
    results = []
    for dtype in dtypes:
        tolerance = STEP_TOLERANCE if dtype == torch.float32 else BF16_STEP_TOLERANCE
        runs = [("reference", dict.fromkeys(STEP_OPS, "reference"))] * (dtype != torch.float32)
        runs += [
            (f"{op}={b}", {op: b}) for op in STEP_OPS for b in backends[op] if b != "reference"
        ]
        for name, chosen in runs:
            result = Result(
                "pretraining_step", name, str(dtype).removeprefix("torch."), shape, "pass",
                tolerance=tolerance,
            )  # fmt: skip
            try:
                loss, norm = _step(model, batch, masks, chosen, dtype)
            except torch.OutOfMemoryError:
                raise
            except Exception as error:
                result.status, result.note = "fail", f"{type(error).__name__}: {error}"
                results.append(result)
                continue
            result.forward_error = abs(loss - expected[0]) / abs(expected[0])
            result.backward_error = abs(norm - expected[1]) / expected[1]
            if not all(e <= tolerance for e in (result.forward_error, result.backward_error)):
                result.status, result.note = "fail", "loss or gradient norm outside the tolerance"
            else:
                result.note = f"loss {loss:.6f}, gradient norm {norm:.4f}"
            results.append(result)
    return results


def training_backends(op: str, device: torch.device, quick: bool) -> tuple[str, ...]:
    """The backends of `op` a training step can use on `device` (flex has no CPU backward; the
    Triton interpreter is only practical at --quick sizes)."""
    names = usable_backends(op, device)
    if device.type == "cpu":
        names = tuple(n for n in names if n != "flex" and (n != "triton" or quick))
    return names


def tiny_pretrain_config(image_size: tuple[int, int]) -> PretrainConfig:
    """The tiny_synthetic recipe (geomim_test encoder, width-32 decoder) at `image_size`."""
    return PretrainConfig(
        encoder="geomim_test",
        teacher_patch=8,
        grad_checkpointing=False,
        decoder=DecoderConfig(
            width=32, heads=2, semantic_depth=4, semantic_cross_view=(1, 3), geometry_tap=1,
            geometry_depth=2,
        ),
        view_transform=ViewTransformConfig(
            in_channels=32, context_channels=16, prediction_channels=8,
            image_size=image_size, xbound=(-51.2, 51.2, 1.6), ybound=(-51.2, 51.2, 1.6),
            dbound=(1.0, 60.0, 1.0),
        ),
    )  # fmt: skip


def _step(
    model, batch, masks, chosen: dict[str, str], dtype: torch.dtype = torch.float32
) -> tuple[float, float]:
    """Loss and global gradient norm of one step with `chosen` backends, under autocast to
    `dtype` unless fp32; restores the backend setting."""
    for op, backend in chosen.items():
        set_backend(op, backend)
    try:
        model.zero_grad(set_to_none=True)
        device_type = masks.device.type
        with torch.autocast(device_type, dtype=dtype, enabled=dtype != torch.float32):
            loss = model(batch, masks).losses["total"]
        loss.backward()
        grads = [p.grad.float().norm() for p in model.parameters() if p.grad is not None]
        return loss.item(), torch.stack(grads).norm().item()
    finally:
        for op in chosen:
            set_backend(op, None)


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _spconv_build() -> str:
    names = sorted(
        f"{d.metadata['Name']} {d.version}"
        for d in importlib.metadata.distributions()
        if (d.metadata["Name"] or "").lower().startswith("spconv")
    )
    return ", ".join(names) or "not installed"
