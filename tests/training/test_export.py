"""`python -m geomim.export`: the exported backbone is exactly the trained encoder, via timm."""

from __future__ import annotations

import json
import shutil

import pytest
import safetensors.torch
import timm
import torch

from geomim import export
from geomim.pretrain.model import GeoMIMPretrainer
from geomim.training.checkpointing import latest_checkpoint
from geomim.training.config import load_config
from geomim.training.teacher_factory import build_teacher
from tests.helpers import populate_hf_cache


def trained_encoder(run_dir):
    """The encoder as the pretrainer holds it after training: the full model, loaded from the
    latest checkpoint's weights."""
    config = load_config(run_dir / "config.yaml")
    model = GeoMIMPretrainer(config.model, build_teacher(config.teacher))
    weights = safetensors.torch.load_file(latest_checkpoint(run_dir) / "model.safetensors")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected and all(key.startswith("teacher.") for key in missing)
    return model.camera_branch.encoder.eval()


def test_exported_backbone_features_equal_the_trained_encoders(
    tmp_path, reference_run, hf_cache, capsys
):
    export.main([str(reference_run), str(tmp_path / "exported")])
    assert "wrote" in capsys.readouterr().out
    folder = tmp_path / "exported"
    card = (folder / "README.md").read_text()
    licence = json.loads((folder / "config.json").read_text())["pretrained_cfg"]["license"]
    assert licence == "apache-2.0" and "\nlicense: apache-2.0\n" in card  # one statement
    assert "after 8 of 8 steps" in card and "| loss |" in card and "encoder: geomim_test" in card

    images = torch.randn(1, 2, 3, 64, 176, generator=torch.Generator().manual_seed(0))
    encoder = trained_encoder(reference_run)
    with torch.no_grad():
        expected = encoder.forward_intermediates(images, indices=(2, 3), intermediates_only=True)
        local = timm.create_model(
            "geomim_test",
            pretrained=True,
            features_only=True,
            num_views=2,
            pretrained_cfg_overlay=dict(file=str(folder / "model.safetensors")),
        ).eval()
        populate_hf_cache(
            hf_cache,
            "someone/tiny-run",
            {n: folder / n for n in ("model.safetensors", "config.json")},
        )
        hub = timm.create_model("hf-hub:someone/tiny-run", pretrained=True, features_only=True)
        for model in (local, hub.eval()):
            features = model(images)
            assert len(features) == 2
            assert all(torch.equal(a, b) for a, b in zip(features, expected, strict=True))


def test_a_run_whose_weights_are_all_truncated_is_a_one_line_error(tmp_path, reference_run, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    for weights in run.glob("checkpoints/*/model.safetensors"):
        weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(SystemExit) as raised:
        export.main([str(run), str(tmp_path / "exported")])
    assert raised.value.code == 2
    error = capsys.readouterr().err
    assert "holds no complete checkpoint" in error and "model.safetensors" in error
    assert "Traceback" not in error and not (tmp_path / "exported").exists()
