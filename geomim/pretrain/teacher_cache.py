"""A teacher-feature cache: run the frozen teacher once over a dataset, serve its maps after.

Layout of a cache folder:
    manifest.json                 format, the teacher's identity, the data source, map dtype,
                                  and the sample tokens of every shard (written first)
    shard-00000.safetensors ...   one file per `shard_size` samples, each written atomically:
                                  per token, the map's non-empty cells `{token}.cells` (K,) int32
                                  (flat x * Y + y) and their features `{token}.features` (K, C)

A shard on disk is complete (temporary file + rename), so an interrupted run resumes by skipping
the shards that exist; one that cannot be read (damaged after it was written) is rewritten, with
a warning. Maps are those of the points without augmentation; `CachedTeacher` applies
each sample's LiDAR flips to the cached map (flipping cell indices about the grid centre, which
assumes a BEV range centred on the LiDAR, as the official +-54 m is). The teacher's random
choices at caching time (which sweeps) are then fixed for every epoch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor
from tqdm.auto import tqdm

from geomim.checkpoints import save_safetensors_atomic, write_atomic
from geomim.data.nuscenes import POINTS_FORMAT, PointConfig
from geomim.pretrain.teacher import Teacher, TeacherMeta, teacher_meta

CACHE_FORMAT = 1
MANIFEST = "manifest.json"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TEACHER_FLAGS = {"LiDARTeacher": "lidar --checkpoint CHECKPOINT", "HistogramTeacher": "histogram"}


class CacheMismatchError(ValueError):
    """A cache made with another teacher, data source or layout than the run asks for."""


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def build_manifest(
    teacher: Teacher, source: dict, tokens: Sequence[str], shard_size: int, dtype: str
) -> dict:
    """The manifest of a cache of `teacher` over `tokens` from `source` (a JSON-ready dict)."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    if len(set(tokens)) != len(tokens):
        raise ValueError("sample tokens must be unique")
    shards = [list(tokens[i : i + shard_size]) for i in range(0, len(tokens), shard_size)]
    return {
        "format": CACHE_FORMAT,
        "teacher": teacher.identity(),
        "source": source,
        "dtype": dtype,
        "shard_size": shard_size,
        "shards": shards,
    }


def write_teacher_cache(
    teacher: Teacher,
    tokens: Sequence[str],
    load_points: Callable[[int], Tensor],
    out_dir: str | os.PathLike,
    source: dict,
    shard_size: int = 64,
    dtype: str = "float32",
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> Path:
    """Cache `teacher`'s map of every sample: `tokens[i]` names sample i, `load_points(i)` gives
    its (P, 5) points without augmentation. Resumes a partial cache made with the same teacher,
    source and layout (skipping finished shards); refuses any other."""
    out_dir = Path(out_dir)
    manifest = build_manifest(teacher, source, list(tokens), shard_size, dtype)
    manifest_path = out_dir / MANIFEST
    if manifest_path.exists():
        _check_same(read_manifest(out_dir), manifest, out_dir)
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        text = json.dumps(manifest, indent=1)
        write_atomic(manifest_path, lambda temp: Path(temp).write_text(text))
    for stale in out_dir.glob(".shard-*.tmp"):  # left by a run killed mid-write
        stale.unlink()

    teacher = teacher.to(device)
    done = {i for i in range(len(manifest["shards"])) if _readable_shard(out_dir / shard_name(i))}
    total = len(tokens)
    finished = sum(len(manifest["shards"][i]) for i in done)
    position = 0
    with tqdm(
        total=total, initial=finished, desc="teacher cache", unit="sample", disable=not progress
    ) as bar:
        for index, shard_tokens in enumerate(manifest["shards"]):
            start, position = position, position + len(shard_tokens)
            if index in done:
                continue
            tensors = {}
            for offset, token in enumerate(shard_tokens):
                points = load_points(start + offset).to(device)
                bev = teacher([points], teacher_meta([token]))[0]
                tensors.update(_sparse(token, bev.to(DTYPES[dtype])))
                bar.update()
            metadata = {"map_shape": ",".join(str(n) for n in bev.shape)}
            save_safetensors_atomic(tensors, out_dir / shard_name(index), metadata)
    return out_dir


class CachedTeacher(Teacher):
    """Serves the maps a `write_teacher_cache` run stored, flipped as each sample's LiDAR was.

    `expect_teacher`: the identity of the teacher the run would otherwise use
    (`teacher.identity()`); `expect_source`: the run's data source (`points_source`).
    A cache made with anything else is refused with the differing fields named.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        expect_teacher: dict | None = None,
        expect_source: dict | None = None,
    ) -> None:
        super().__init__()
        self.cache_dir = Path(cache_dir)
        manifest_path = self.cache_dir / MANIFEST
        if not manifest_path.exists():
            raise FileNotFoundError(
                f"no teacher cache at {self.cache_dir} ({MANIFEST} missing): make one with "
                "`python -m geomim.teacher cache DATAROOT OUT --teacher ...`"
            )
        self.manifest = read_manifest(self.cache_dir)
        if self.manifest.get("format") != CACHE_FORMAT:
            raise CacheMismatchError(
                f"{self.cache_dir}: cache format {self.manifest.get('format')}, expected "
                f"{CACHE_FORMAT}"
            )
        wanted = {"teacher": expect_teacher, "source": expect_source}
        keys = [key for key, value in wanted.items() if value is not None]
        _check_same(self.manifest, wanted, self.cache_dir, keys)
        self.shard_of = {
            token: index for index, tokens in enumerate(self.manifest["shards"]) for token in tokens
        }

    def bev_map(self, points: list[Tensor], meta: TeacherMeta) -> Tensor:
        maps = torch.stack([self.load(token) for token in meta.tokens])  # (B, C, X, Y)
        device = points[0].device if points else maps.device
        return flip_like(maps, meta.lidar_aug.cpu()).to(device)

    def load(self, token: str) -> Tensor:
        """The cached, unflipped (C, X, Y) float32 map of sample `token`."""
        if token not in self.shard_of:
            raise KeyError(
                f"sample {token} is not in the teacher cache {self.cache_dir}: it was made "
                f"from {self.manifest['source']}"
            )
        path = self.cache_dir / shard_name(self.shard_of[token])
        rebuild = rebuild_command(self.cache_dir, self.manifest)
        if not path.exists():
            raise FileNotFoundError(
                f"{path} is missing: the cache is incomplete; rerun the caching command "
                f"`{rebuild}`: it resumes where it stopped"
            )
        try:
            with safe_open(path, framework="pt") as shard:
                shape = [int(n) for n in shard.metadata()["map_shape"].split(",")]
                cells = shard.get_tensor(f"{token}.cells").long()
                features = shard.get_tensor(f"{token}.features").float()
        except (OSError, SafetensorError, KeyError, TypeError, ValueError) as error:
            raise OSError(
                f"cannot read sample {token} from the teacher-cache shard {path} "
                f"({type(error).__name__}: {error}); rebuild it by rerunning the caching command "
                f"`{rebuild}`: it rewrites unreadable and missing shards only"
            ) from error
        dense = torch.zeros(shape[0], shape[1] * shape[2])
        dense[:, cells] = features.T
        return dense.view(shape)

    def identity(self) -> dict:
        return self.manifest["teacher"]


def points_source(version: str, seed: int, points: PointConfig) -> dict:
    """What decides a dataset's teacher inputs (not where it lives or which samples it holds:
    a missing sample is an error when asked for): version, seed, point loading and the version
    of the loading code (`POINTS_FORMAT`)."""
    return {
        "version": version,
        "seed": seed,
        "points": json.loads(json.dumps(dataclasses.asdict(points))),
        "points_format": POINTS_FORMAT,
    }


def rebuild_command(cache_dir: str | os.PathLike, manifest: dict | None = None) -> str:
    """The `python -m geomim.teacher cache` command line that (re)makes the cache in `cache_dir`,
    with what its manifest records (DATAROOT, the split and a checkpoint are not recorded)."""
    command = f"python -m geomim.teacher cache DATAROOT {cache_dir}"
    if manifest is None:
        return command + " --teacher ... (the arguments that made it)"
    teacher = (manifest.get("teacher") or {}).get("class")
    command += f" --teacher {TEACHER_FLAGS.get(teacher, '...')}"
    version = (manifest.get("source") or {}).get("version")
    if version is not None:
        command += f" --version {version} --split SPLIT"
    return command + f" --shard-size {manifest.get('shard_size')} --dtype {manifest.get('dtype')}"


def read_manifest(cache_dir: str | os.PathLike) -> dict:
    """The manifest of the cache in `cache_dir`; one that cannot be parsed is a ValueError
    naming the file."""
    path = Path(cache_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        manifest, problem = None, f"{type(error).__name__}: {error}"
    else:
        problem = "not a JSON object with its shards"
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        raise ValueError(
            f"the teacher-cache manifest {path} cannot be read ({problem}): the cache is damaged; "
            f"delete {Path(cache_dir)} and make it again with `{rebuild_command(cache_dir)}`"
        )
    return manifest


def flip_like(maps: Tensor, lidar_aug: Tensor) -> Tensor:
    """Apply each sample's LiDAR flips ((B, 4, 4) matrices diag(+-1, +-1, 1, 1)) to (B, C, X, Y)
    maps: a flipped x mirrors dim -2, a flipped y dim -1."""
    flipped = []
    for bev, matrix in zip(maps, lidar_aug, strict=True):
        signs = matrix.diagonal()[:2]
        expected = torch.diag(torch.tensor([*signs.tolist(), 1.0, 1.0]))
        if not (signs.abs() == 1).all() or not torch.equal(matrix.float(), expected):
            raise ValueError(
                "a cached teacher map can only follow LiDAR flips (diag(+-1, +-1, 1, 1)), got "
                f"{matrix.tolist()}"
            )
        dims = [dim for dim, sign in zip((-2, -1), signs.tolist(), strict=True) if sign < 0]
        flipped.append(bev.flip(dims) if dims else bev)
    return torch.stack(flipped)


def _readable_shard(path: Path) -> bool:
    """Whether shard `path` exists and its header (which covers the whole file) parses; warns
    that an unreadable one will be rewritten."""
    if not path.exists():
        return False
    try:
        with safe_open(path, framework="pt") as shard:
            shard.metadata()["map_shape"]
        return True
    except (OSError, SafetensorError, KeyError, TypeError) as error:
        warnings.warn(
            f"the teacher-cache shard {path} cannot be read ({type(error).__name__}: {error}): "
            "computing it again",
            RuntimeWarning,
            stacklevel=3,
        )
        return False


def _sparse(token: str, bev: Tensor) -> dict[str, Tensor]:
    """A (C, X, Y) map as its non-empty cells and their features."""
    flat = bev.flatten(1)  # (C, X*Y)
    cells = (flat != 0).any(dim=0).nonzero()[:, 0]
    return {f"{token}.cells": cells.int().cpu(), f"{token}.features": flat[:, cells].T.cpu()}


def _check_same(
    found: dict, wanted: dict, where: Path, keys: Sequence[str] = ("teacher", "source", "dtype")
) -> None:
    """Raise CacheMismatchError naming every differing field of `keys` (and the shards)."""
    differences = [
        f"{path}: cache has {a!r}, this run {b!r}"
        for key in keys
        for path, a, b in _differences(found.get(key), wanted.get(key), key)
    ]
    if "shards" in wanted and not differences and found.get("shards") != wanted["shards"]:
        differences.append("the samples or their shard layout (shard_size) differ")
    if differences:
        raise CacheMismatchError(
            f"the teacher cache at {where} was made differently: " + "; ".join(differences)
        )


def _differences(a: object, b: object, path: str) -> Iterator[tuple[str, object, object]]:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            yield from _differences(a.get(key), b.get(key), f"{path}.{key}")
    elif a != b:
        yield path, a, b
