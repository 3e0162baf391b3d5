"""Shared test helpers. The suite never reaches the network: the Hub runs offline throughout."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from geomim.kernels import _triton, set_backend
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


@pytest.fixture
def interpreter(monkeypatch):
    """Run Triton kernels on the CPU interpreter for this test."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    if not _triton.interpreting():  # someone pinned triton.knobs.runtime.interpret in Python
        pytest.skip("triton.knobs.runtime.interpret is pinned off")


@pytest.fixture
def compiled(monkeypatch):
    """Compile Triton kernels (a suite run under TRITON_INTERPRET=1 would interpret them)."""
    triton = pytest.importorskip("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if _triton.interpreting() or not isinstance(triton.language.standard.sum, triton.JITFunction):
        pytest.skip("Triton was imported under TRITON_INTERPRET=1: it only interprets now")


@pytest.fixture
def window_attention_backend(monkeypatch):
    """`use(name)` runs every window attention of the test on backend `name` and returns whether
    the layers' fast path should be on (off for "reference", the layers' official path)."""
    monkeypatch.delenv("GEOMIM_KERNELS", raising=False)

    def use(name: str) -> bool:
        set_backend("window_attention", name)
        return name != "reference"

    yield use
    set_backend("window_attention", None)
