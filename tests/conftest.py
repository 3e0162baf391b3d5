"""Shared test helpers. The suite never reaches the network: the Hub runs offline throughout."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import FIXTURES


@pytest.fixture(scope="session")
def swin_fixture() -> dict[str, dict[str, torch.Tensor]]:
    """The official `SwinTransformerBEVFT` fixture: its state dict and its inputs/outputs."""
    folder = FIXTURES / "official-swin-tiny"
    return {
        "state_dict": load_file(folder / "state_dict.safetensors"),
        "io": load_file(folder / "io.safetensors"),
    }


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache that huggingface_hub (offline) reads for this test."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache
