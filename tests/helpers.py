"""Test helpers: official-format state dicts from key lists, a real Hugging Face cache layout."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import torch

TESTS = Path(__file__).parent
FIXTURES = TESTS / "fixtures"
DATA = TESTS / "data"


def official_state_dict(keys_file: str, prefix: str = "", seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with the exact names and shapes listed in an `official-keys-*.txt` file."""
    generator = torch.Generator().manual_seed(seed)
    state_dict = {}
    for line in (DATA / keys_file).read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        name, shape = re.fullmatch(r"(\S+) \(([\d, ]*)\)", line).groups()
        size = tuple(int(s) for s in shape.replace(" ", "").split(",") if s)
        if name.endswith(("relative_position_index", "num_batches_tracked")):  # int64 buffers
            state_dict[prefix + name] = torch.zeros(size, dtype=torch.int64)
        else:
            state_dict[prefix + name] = torch.randn(size, generator=generator) * 0.02
    return state_dict


def populate_hf_cache(
    cache_dir: Path, repo_id: str, files: dict[str, Path], revision: str = "main"
) -> str:
    """Lay files out exactly as huggingface_hub's cache does (blobs, snapshots, refs/<revision>)."""
    repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    for folder in (repo / "blobs", repo / "refs", snapshot):
        folder.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        shutil.copyfile(source, repo / "blobs" / digest)
        (snapshot / name).symlink_to(Path("../../blobs") / digest)
    (repo / "refs" / revision).write_text(commit)
    return commit
