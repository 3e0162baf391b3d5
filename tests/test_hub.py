"""Hub loading (offline cache, revisions, hf-hub: folders), conversion CLI, push, and errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest
import timm
import torch
from timm.models._features import FeatureGetterNet

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
    """A features_only model, or one built with out_indices=(2, 3), gives the official outputs."""
    io = swin_fixture["io"]
    with torch.no_grad():
        if isinstance(model, FeatureGetterNet):
            c4, c5 = model.eval()(io["input_a"])
        else:
            c4, c5 = model.eval().forward_intermediates(
                io["input_a"], (2, 3), intermediates_only=True
            )
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
        features_only=True,
        pretrained_cfg_overlay=dict(file=str(out / "model.safetensors")),
    )
    assert_official_outputs(model, swin_fixture)


def test_official_pth_loads_through_pretrained_cfg_overlay(tmp_path, swin_fixture):
    model = timm.create_model(
        "geomim_test",
        pretrained=True,
        out_indices=(2, 3),
        pretrained_cfg_overlay=dict(file=str(official_pth(tmp_path, swin_fixture))),
    )
    assert_official_outputs(model, swin_fixture)


def test_pretrained_true_resolves_the_hf_cache(tmp_path, hf_cache, swin_fixture):
    weights = tmp_path / "model.safetensors"
    save_safetensors_atomic(
        hub.convert_official(swin_fixture["state_dict"], "geomim_test"), weights
    )
    populate_hf_cache(hf_cache, "geomim/geomim_test.random", {"model.safetensors": weights})
    model = timm.create_model("geomim_test", pretrained=True, out_indices=(2, 3))
    assert_official_outputs(model, swin_fixture)
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
        features_only=True,
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
    model = timm.create_model("hf-hub:someone/geomim-test", pretrained=True, out_indices=(2, 3))
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


def test_integer_weights_in_a_file_are_refused_through_timm(tmp_path, swin_fixture):
    converted = hub.convert_official(swin_fixture["state_dict"], "geomim_test")
    converted["patch_embed.proj.weight"] = converted["patch_embed.proj.weight"].to(torch.int32)
    path = tmp_path / "model.safetensors"
    save_safetensors_atomic(converted, path)
    with pytest.raises(CheckpointError, match=r"patch_embed\.proj\.weight: found torch\.int32"):
        timm.create_model(
            "geomim_test", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))
        )


def test_a_text_file_named_pth_is_a_clear_error_through_timm(tmp_path):
    path = tmp_path / "geomim_test.pth"
    path.write_text("Entry not found\n")
    with pytest.raises(CheckpointError, match=r"geomim_test\.pth is a text file"):
        timm.create_model(
            "geomim_test", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))
        )


def test_convert_cli_failure_prints_the_message_and_exits_2(tmp_path, swin_fixture, capsys):
    source = str(official_pth(tmp_path, swin_fixture))
    out = str(tmp_path / "out")
    with pytest.raises(SystemExit) as exit_info:
        hub.main(["convert", source, out, "--variant", "geomim_large"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("python -m geomim.hub convert: error: checkpoint is for a Swin with")
    assert "embed dim 16 (geomim_test)" in error and "embed dim 192 (geomim_large)" in error
    assert "Traceback" not in error
    assert not (tmp_path / "out").exists()
    for argv in (["--debug", "convert"], ["convert", "--debug"]):
        with pytest.raises(CheckpointError, match="pick the matching variant"):
            hub.main([*argv, source, out, "--variant", "geomim_large"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["convert", "{tmp}/absent.pth", "{tmp}/out", "--variant", "geomim_test"], "no checkpoint"),
        (["convert", "{tmp}/text.pth", "{tmp}/out", "--variant", "geomim_test"], "a text file"),
        (["push", "{tmp}", "org/x"], r"lacks model\.safetensors"),
    ],
)
def test_cli_errors_exit_2_with_the_message(tmp_path, capsys, argv, message):
    (tmp_path / "text.pth").write_text("not weights\n")
    with pytest.raises(SystemExit) as exit_info:
        hub.main([arg.format(tmp=tmp_path) for arg in argv])
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_convert_cli_of_the_wrong_variant_in_a_subprocess(tmp_path, swin_fixture):
    """As a user runs it: the message on stderr, exit status 2, no traceback."""
    source = official_pth(tmp_path, swin_fixture)
    command = [sys.executable, "-m", "geomim.hub", "convert", str(source), str(tmp_path / "o")]
    result = subprocess.run(
        [*command, "--variant", "geomim_large"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2, result.stderr
    assert "error: checkpoint is for a Swin with embed dim 16" in result.stderr
    assert "Traceback" not in result.stderr


def test_weights_missing_from_the_cache_fail_at_once_offline(hf_cache):
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError) as raised:
        timm.create_model("geomim_base", pretrained=True)
    assert "not in the local Hugging Face cache and HF_HUB_OFFLINE is set" in str(raised.value)
    assert "python -m geomim.hub convert" in str(raised.value)  # what to do instead
    assert time.perf_counter() - start < 5  # no model built, no network waited on


def test_an_unreachable_hub_fails_at_once_with_one_error(hf_cache, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match=r"the Hub \(127.0.0.1\) cannot be reached"):
        timm.create_model("geomim_base", pretrained=True)
    assert time.perf_counter() - start < 5  # not huggingface_hub's retries with back-off
