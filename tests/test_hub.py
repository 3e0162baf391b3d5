"""Hub loading (offline cache, revisions, hf-hub: folders), conversion CLI, push, and errors."""

from __future__ import annotations

import json

import pytest
import timm
import torch

import geomim  # noqa: F401
from geomim import hub
from geomim.checkpoints import CheckpointError, save_safetensors_atomic
from tests.helpers import official_state_dict, populate_hf_cache


def official_pth(tmp_path, swin_fixture):
    """The fixture as the official release stores it: a .pth with `state_dict` and mmcv `meta`."""
    path = tmp_path / "geomim_test.pth"
    torch.save({"state_dict": swin_fixture["state_dict"], "meta": {"epoch": 50}}, path)
    return path


def assert_official_outputs(model, swin_fixture):
    io = swin_fixture["io"]
    with torch.no_grad():
        c4, c5 = model.eval().forward_intermediates(io["input_a"], (2, 3), intermediates_only=True)
    torch.testing.assert_close(c4, io["output_a_stage2"], atol=1e-5, rtol=0)
    torch.testing.assert_close(c5, io["output_a_stage3"], atol=1e-5, rtol=0)


def test_convert_cli_writes_a_hub_folder(tmp_path, swin_fixture, capsys):
    out = tmp_path / "hub-folder"
    hub.main(
        ["convert", str(official_pth(tmp_path, swin_fixture)), str(out), "--variant", "geomim_test"]
    )
    assert "wrote 122 tensors for geomim_test" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "geomim_test"
    assert config["num_features"] == 128
    assert "declares no licence" in (out / "README.md").read_text()
    model = timm.create_model(
        "geomim_test",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(out / "model.safetensors")),
    )
    assert_official_outputs(model, swin_fixture)


def test_official_pth_loads_through_pretrained_cfg_overlay(tmp_path, swin_fixture):
    model = timm.create_model(
        "geomim_test",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(official_pth(tmp_path, swin_fixture))),
    )
    assert_official_outputs(model, swin_fixture)


def test_pretrained_true_resolves_the_hf_cache(tmp_path, hf_cache, swin_fixture):
    weights = tmp_path / "model.safetensors"
    save_safetensors_atomic(
        hub.convert_official(swin_fixture["state_dict"], "geomim_test"), weights
    )
    populate_hf_cache(hf_cache, "geomim/geomim_test.random", {"model.safetensors": weights})
    assert_official_outputs(timm.create_model("geomim_test", pretrained=True), swin_fixture)
    features = timm.create_model("geomim_test", pretrained=True, features_only=True)
    assert [f.shape[1] for f in features(torch.randn(1, 3, 64, 64))] == [64, 128]


def test_hub_revisions_are_resolved(tmp_path, hf_cache, swin_fixture):
    weights = tmp_path / "model.safetensors"
    save_safetensors_atomic(
        hub.convert_official(swin_fixture["state_dict"], "geomim_test"), weights
    )
    populate_hf_cache(hf_cache, "geomim/geomim_test.random", {"model.safetensors": weights}, "v1")
    model = timm.create_model(
        "geomim_test",
        pretrained=True,
        pretrained_cfg_overlay=dict(hf_hub_id="geomim/geomim_test.random@v1"),
    )
    assert_official_outputs(model, swin_fixture)


def test_hf_hub_prefix_loads_a_converted_folder(tmp_path, hf_cache, swin_fixture):
    folder = tmp_path / "converted"
    hub.write_hub_folder(
        hub.convert_official(swin_fixture["state_dict"], "geomim_test"), "geomim_test", folder, "x"
    )
    files = {name: folder / name for name in ("model.safetensors", "config.json")}
    populate_hf_cache(hf_cache, "someone/geomim-test", files)
    model = timm.create_model("hf-hub:someone/geomim-test", pretrained=True)
    assert_official_outputs(model, swin_fixture)


def test_geomim_base_loads_from_the_hf_cache(tmp_path, hf_cache):
    official = official_state_dict("official-keys-geomim_base.txt", seed=3)
    weights = tmp_path / "model.safetensors"
    save_safetensors_atomic(hub.convert_official(official, "geomim_base"), weights)
    populate_hf_cache(hf_cache, "geomim/geomim_base.nuscenes", {"model.safetensors": weights})
    model = timm.create_model("geomim_base", pretrained=True)
    torch.testing.assert_close(
        model.stages[2].blocks[17].mlp.fc2.weight,
        official["stages.2.blocks.17.ffn.layers.1.weight"],
    )
    torch.testing.assert_close(model.absolute_pos_embed, official["absolute_pos_embed"])


def test_unreachable_weights_explain_how_to_convert(hf_cache):
    with pytest.raises(
        FileNotFoundError,
        match=r"(?s)no pretrained weights for 'geomim_base'.*"
        r"python -m geomim.hub convert /path/to/geomim_base.pth",
    ):
        timm.create_model("geomim_base", pretrained=True)


def test_loading_a_refused_pickle_through_timm_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.pth"
    torch.save({"state_dict": {}, "thing": CheckpointError("x")}, path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        timm.create_model(
            "geomim_test", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))
        )


def test_loading_a_corrupt_safetensors_through_timm_is_a_clear_error(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        timm.create_model(
            "geomim_test", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))
        )


def test_convert_official_rejects_unknown_variant(swin_fixture):
    with pytest.raises(ValueError, match=r"unknown variant 'swin_b'.*geomim_base"):
        hub.convert_official(swin_fixture["state_dict"], "swin_b")


def test_push_creates_the_repo_and_uploads_the_folder(tmp_path, swin_fixture, monkeypatch):
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, private, exist_ok):
            calls.append(("create", repo_id, private, exist_ok))

        def upload_folder(self, repo_id, folder_path, revision, commit_message):
            calls.append(
                ("upload", repo_id, sorted(p.name for p in folder_path.iterdir()), revision)
            )
            return "https://huggingface.co/org/x/commit/abc"

    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    with pytest.raises(FileNotFoundError, match=r"lacks model\.safetensors"):
        hub.push_folder(tmp_path, "org/x")
    folder = tmp_path / "folder"
    hub.main(
        [
            "convert",
            str(official_pth(tmp_path, swin_fixture)),
            str(folder),
            "--variant",
            "geomim_test",
        ]
    )
    hub.main(["push", str(folder), "org/x", "--private", "--token", "t0k"])
    assert calls[-3:] == [
        ("init", "t0k"),
        ("create", "org/x", True, True),
        ("upload", "org/x", ["README.md", "config.json", "model.safetensors"], None),
    ]
