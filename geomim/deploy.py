"""Deployment exports of a backbone: ONNX (checked with onnxruntime) and `torch.export` programs.

Both trace the model's `features_only` forward on a fixed image size with every fused op on its
plain PyTorch reference (`plain_ops`): no Triton, no custom autograd Function, no compiled
kernel reaches the graph, so the file holds standard ONNX operators only (`custom_ops` lists
any that are not). The batch of rigs is a dynamic axis. Every file is checked right after it is
written, against eager PyTorch on a fresh random rig, and removed if it misses the tolerance.

    backbone = timm.create_model("geomim_base", pretrained=True, features_only=True)
    report = geomim.deploy.to_onnx(backbone, "exported/model.onnx")  # max_abs_error, ...
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from timm.models._features import FeatureGetterNet
from torch import Tensor, nn

from geomim.kernels import set_backend
from geomim.kernels.dispatch import BACKENDS, ENVIRONMENT_VARIABLE

DEFAULT_IMAGE_SIZE = (256, 704)  # (H, W), the official crop
DEFAULT_VIEWS = 6
TOLERANCE = 1e-4  # max abs difference to eager PyTorch at fp32
INSTALL_HINT = 'pip install "geomim[deploy]"'


class ExportCheckError(RuntimeError):
    """An exported file did not reproduce eager PyTorch; the file was removed."""


@dataclass(frozen=True)
class ExportReport:
    """What was written and how closely it reproduces eager PyTorch."""

    path: Path
    input_shape: tuple[int, ...]  # (rigs, views, 3, H, W) traced
    output_shapes: list[tuple[int, ...]]
    max_abs_error: float  # on a fresh random rig, against eager PyTorch
    dynamic_rigs: bool  # whether the rig count is a dynamic axis


@contextlib.contextmanager
def plain_ops(model: nn.Module) -> Iterator[None]:
    """Every fused op on its reference backend and the model on its reference path (explicit
    attention, whole-map MLPs) inside the block; both restored after."""
    switches = [
        (module, name, getattr(module, name))
        for module in model.modules()
        for name in ("fused_attn", "chunked")
        if isinstance(getattr(module, name, None), bool)
    ]
    for op in BACKENDS:
        set_backend(op, "reference")
    for module, name, _ in switches:
        setattr(module, name, False)
    saved = os.environ.pop(ENVIRONMENT_VARIABLE, None)  # the environment would win otherwise
    try:
        yield
    finally:
        for op in BACKENDS:
            set_backend(op, None)
        for module, name, value in switches:
            setattr(module, name, value)
        if saved is not None:
            os.environ[ENVIRONMENT_VARIABLE] = saved


def to_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
    views: int = DEFAULT_VIEWS,
    dynamic_rigs: bool = True,
) -> ExportReport:
    """Export a `features_only` backbone to ONNX with PyTorch's dynamo-based exporter, then check
    it with onnxruntime (CPU); the file is written only if the check passes."""
    _require("onnx", "onnxscript", "onnxruntime")
    example = _prepare(model, image_size, views)
    path = Path(path)

    def export(target: Path, images: Tensor, dynamic: bool) -> None:
        shapes = ({0: torch.export.Dim("rigs", min=1, max=1024)},) if dynamic else None
        outputs = [f"stage{index}" for index in model.feature_info.out_indices]
        torch.onnx.export(
            model, (images,), str(target), dynamo=True, dynamic_shapes=shapes, verbose=False,
            input_names=["images"], output_names=outputs,
        )  # fmt: skip

    def run(target: Path, images: Tensor) -> list[Tensor]:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: images.numpy()}
        return [torch.from_numpy(output) for output in session.run(None, feed)]

    return _export_checked(model, example, path, export, run, dynamic_rigs)


def to_exported_program(
    model: nn.Module,
    path: str | os.PathLike,
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
    views: int = DEFAULT_VIEWS,
    dynamic_rigs: bool = True,
) -> ExportReport:
    """Save a `torch.export` program (`.pt2`) of a `features_only` backbone, checked by loading
    it back and running it against the eager model."""
    example = _prepare(model, image_size, views)
    path = Path(path)

    def export(target: Path, images: Tensor, dynamic: bool) -> None:
        shapes = ({0: torch.export.Dim("rigs", min=1, max=1024)},) if dynamic else None
        torch.export.save(torch.export.export(model, (images,), dynamic_shapes=shapes), target)

    def run(target: Path, images: Tensor) -> list[Tensor]:
        with torch.no_grad():
            return list(torch.export.load(target).module()(images))

    return _export_checked(model, example, path, export, run, dynamic_rigs)


def custom_ops(path: str | os.PathLike) -> list[str]:
    """The operators of an ONNX file outside the standard ONNX domains (`domain::op`)."""
    import onnx

    proto = onnx.load(str(path))
    nodes = [*proto.graph.node, *(n for function in proto.functions for n in function.node)]
    known = {"", "ai.onnx", "ai.onnx.ml"} | {function.domain for function in proto.functions}
    return sorted({f"{n.domain}::{n.op_type}" for n in nodes if n.domain not in known})


def _prepare(model: nn.Module, image_size: tuple[int, int], views: int) -> Tensor:
    """Check that `model` is a GeoMIM `features_only` backbone that takes this input; the
    example input (seeded): two rigs, (2, views, 3, H, W), since a traced size of 1 would be
    specialised to a constant."""
    inner = getattr(model, "model", None)
    if not isinstance(model, FeatureGetterNet) or not type(inner).__module__.startswith("geomim."):
        raise TypeError(
            f"expected a GeoMIM backbone created with features_only=True (e.g. "
            f"timm.create_model('geomim_base', features_only=True)), got {type(model).__name__}"
        )
    height, width = image_size
    if views < 1 or height < 1 or width < 1:
        raise ValueError(
            f"expected views >= 1 and a positive image size, got {views}, {image_size}"
        )
    example = torch.randn(2, views, 3, height, width, generator=torch.Generator().manual_seed(0))
    model.eval()
    try:
        with torch.no_grad(), plain_ops(model):
            model(example)
    except ValueError as error:
        raise ValueError(
            f"the model cannot take a rig of {views} x 3 x {height} x {width}: {error}"
        ) from error
    return example


def _export_checked(model, example, path, export, run, dynamic_rigs: bool) -> ExportReport:
    """Export to a temporary file (a fixed count of one rig if `dynamic_rigs` is off or fails),
    check it on fresh random rigs (three if dynamic), and only then move it to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.tmp{path.suffix}")  # loaders read the suffix
    with plain_ops(model):
        try:
            if not dynamic_rigs:
                raise RuntimeError("a fixed rig count was asked for")
            export(temporary, example, True)
        except Exception:
            dynamic_rigs, example = False, example[:1]
            export(temporary, example, False)
        rigs = 3 if dynamic_rigs else 1
        generator = torch.Generator().manual_seed(1)
        images = torch.randn(rigs, *example.shape[1:], generator=generator)
        with torch.no_grad():
            expected = [output.float() for output in model(images)]
    try:
        outputs = run(temporary, images)
        error = max(
            (ours - reference).abs().max().item()
            for ours, reference in zip(outputs, expected, strict=True)
        )
    except Exception:
        temporary.unlink(missing_ok=True)
        raise
    if not error <= TOLERANCE:
        temporary.unlink(missing_ok=True)
        raise ExportCheckError(
            f"{path.name} differs from eager PyTorch by {error:.2e} (max abs, tolerance "
            f"{TOLERANCE:g}); nothing was written"
        )
    temporary.replace(path)
    return ExportReport(
        path, tuple(example.shape), [tuple(o.shape) for o in outputs], error, dynamic_rigs
    )


def _require(*modules: str) -> None:
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f"ONNX export needs {', '.join(missing)}: {INSTALL_HINT}")
