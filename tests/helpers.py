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
        if name.endswith("relative_position_index"):
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


class HistogramTeacher(torch.nn.Module):
    """A fixed stand-in LiDAR teacher: per-cell log point count and mean height of the BEV grid,
    mapped to `channels` by a fixed random 1x1 convolution. Depends only on the points."""

    def __init__(self, channels: int, bounds: tuple[float, float, float], cells: int) -> None:
        super().__init__()
        self.low, self.high, self.cells = bounds[0], bounds[1], cells
        generator = torch.Generator().manual_seed(0)
        self.register_buffer("weight", torch.randn(channels, 2, generator=generator))

    def forward(self, points: list[torch.Tensor]) -> torch.Tensor:
        maps = []
        for cloud in points:
            cell = ((cloud[:, :2] - self.low) / (self.high - self.low) * self.cells).floor().long()
            inside = ((cell >= 0) & (cell < self.cells)).all(dim=1)
            flat = cell[inside, 0] * self.cells + cell[inside, 1]
            count = torch.zeros(self.cells**2).index_add_(0, flat, torch.ones(len(flat)))
            height = torch.zeros(self.cells**2).index_add_(0, flat, cloud[inside, 2])
            features = torch.stack([count.log1p(), height / count.clamp(min=1)])
            maps.append(features.view(2, self.cells, self.cells))
        return torch.einsum("ck,bkxy->bcxy", self.weight, torch.stack(maps))
