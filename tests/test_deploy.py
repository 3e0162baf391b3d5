"""Deployment exports: ONNX checked by onnxruntime, torch.export programs, plain ops only."""

from __future__ import annotations

import subprocess
import sys

import onnx
import onnxruntime
import pytest
import timm
import torch
from safetensors.torch import save_file

from geomim import deploy
from geomim.export import main

SIZE = (64, 176)


def run_onnx(path, images: torch.Tensor) -> list[torch.Tensor]:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: images.numpy()})
    return [torch.from_numpy(output) for output in outputs]


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """Random geomim_test weights as a safetensors file (seeded)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "model.safetensors"
    save_file(timm.create_model("geomim_test", out_indices=(2, 3)).state_dict(), path)
    return path


def test_the_cli_exports_a_weights_file_to_onnx_with_standard_operators_only(
    weights_file, tmp_path, capsys
):
    main([str(weights_file), str(tmp_path), "--format", "onnx", "--model", "geomim_test",
          "--image-size", *map(str, SIZE)])  # fmt: skip
    assert "max |difference| to eager PyTorch" in capsys.readouterr().out
    path = tmp_path / "model.onnx"
    assert deploy.custom_ops(path) == []
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["images"]
    assert [o.name for o in graph.output] == ["stage2", "stage3"]
    operators = {node.op_type for node in graph.node}
    assert "MatMul" in operators and "Softmax" in operators  # the attention, written out
    overlay = {"file": str(weights_file)}
    backbone = timm.create_model(
        "geomim_test", pretrained=True, features_only=True, pretrained_cfg_overlay=overlay
    ).eval()
    images = torch.randn(3, 6, 3, *SIZE)  # three rigs: the rig count is dynamic
    with torch.no_grad():
        expected = backbone(images)
    for ours, reference in zip(run_onnx(path, images), expected, strict=True):
        torch.testing.assert_close(ours, reference, atol=1e-4, rtol=0)


def test_a_cva_vit_exports_to_onnx_within_tolerance(tmp_path):
    torch.manual_seed(0)
    vit = timm.create_model("geomim_vit_small", depth=4, cva_blocks=(1, 3), features_only=True)
    report = deploy.to_onnx(vit, tmp_path / "vit.onnx", image_size=SIZE)
    assert report.max_abs_error <= deploy.TOLERANCE and report.dynamic_rigs
    assert report.output_shapes == [(3, 6, 384, 8, 22), (3, 6, 384, 4, 11), (3, 6, 384, 2, 6)]
    assert deploy.custom_ops(report.path) == []


def test_an_exported_program_reloads_and_matches_eager(tmp_path):
    torch.manual_seed(0)
    backbone = timm.create_model("geomim_test", features_only=True)
    report = deploy.to_exported_program(backbone, tmp_path / "model.pt2", image_size=SIZE)
    program = torch.export.load(report.path)
    kinds = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert not [k for k in kinds if "geomim" in k or "triton" in k]  # plain aten ops only
    images = torch.randn(1, 6, 3, *SIZE)
    with torch.no_grad():
        for ours, reference in zip(program.module()(images), backbone(images), strict=True):
            torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


def test_an_export_that_misses_the_tolerance_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr(deploy, "TOLERANCE", -1.0)
    with pytest.raises(deploy.ExportCheckError, match="nothing was written"):
        deploy.to_exported_program(
            timm.create_model("geomim_test", features_only=True), tmp_path / "m.pt2", SIZE
        )
    assert list(tmp_path.iterdir()) == []


def test_unsupported_models_sizes_and_installs_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(TypeError, match="features_only=True"):
        deploy.to_onnx(timm.create_model("geomim_test"), tmp_path / "m.onnx")
    with pytest.raises(TypeError, match="expected a GeoMIM backbone"):
        deploy.to_onnx(timm.create_model("resnet18", features_only=True), tmp_path / "m.onnx")
    backbone = timm.create_model("geomim_test", features_only=True)
    with pytest.raises(ValueError, match=r"cannot take a rig of 6 x 3 x 2 x 2"):
        deploy.to_onnx(backbone, tmp_path / "m.onnx", image_size=(2, 2))
    real_find_spec = deploy.importlib.util.find_spec
    monkeypatch.setattr(
        deploy.importlib.util, "find_spec",
        lambda name: None if name == "onnxruntime" else real_find_spec(name),
    )  # fmt: skip
    with pytest.raises(ImportError, match=r'onnxruntime: pip install "geomim\[deploy\]"'):
        deploy.to_onnx(backbone, tmp_path / "m.onnx")


def test_cli_mistakes_are_one_line_errors_without_a_traceback(weights_file, tmp_path):
    def cli(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "geomim.export", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=300)

    missing_model = cli(str(weights_file), str(tmp_path), "--format", "onnx")
    assert missing_model.returncode == 2
    assert "--model NAME is needed" in missing_model.stderr
    assert "Traceback" not in missing_model.stderr
    timm_folder = cli(str(weights_file), str(tmp_path), "--model", "geomim_test")
    assert (
        timm_folder.returncode == 2 and "--format timm exports a run folder" in timm_folder.stderr
    )
    unknown = cli(str(weights_file), str(tmp_path), "--format", "onnx", "--model", "resnet18")
    assert unknown.returncode == 2 and "'resnet18' is not a GeoMIM model" in unknown.stderr
