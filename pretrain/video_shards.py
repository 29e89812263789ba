"""Shard files and the manifest of a pretraining dataset folder.

Folder layout::

    manifest.json              what was asked for and every completed shard (rewritten atomically)
    shard-000000.dwmc          one shard: whole episodes from one seed, a `diswm.records` record
    shard-000001.dwmc
    ...

A shard holds the concatenated episode arrays of `diswm.rollout` (episode starts marked by
``is_first``). It is written to ``<name>.tmp`` and renamed, so a shard file either exists whole or
not at all; it becomes part of the dataset only once the manifest lists it (with its frame and
episode counts, seed and sha256 checksum). Nothing is unpickled: records are a JSON header plus a
compressed payload with a CRC.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from diswm import records
from diswm.atomic import atomic_write
from diswm.rollout import STEP_KEYS, split_episodes

MANIFEST = "manifest.json"
FORMAT = "diswm-pretrain-shards-v1"
SHARD_SUFFIX = ".dwmc"


class CorruptShard(ValueError):
    """A shard file is missing, altered or unreadable; the message starts with its name."""


class ManifestError(ValueError):
    """The manifest is missing, unreadable or inconsistent; the message says what."""


def shard_name(index: int) -> str:
    return f"shard-{index:06d}{SHARD_SUFFIX}"


def shard_seed(base_seed: int, index: int) -> int:
    """The env/policy seed of shard `index`: a pure function of (base seed, index), so a resumed
    collection draws exactly what an uninterrupted one would."""
    return int(np.random.SeedSequence([int(base_seed), int(index)]).generate_state(1)[0])


def encode_shard(index: int, seed: int, arrays: Mapping[str, np.ndarray],
                 codec: str = "lz4") -> tuple[bytes, dict[str, Any]]:
    """One shard's file bytes and its manifest entry (without "bytes" and "checksum", which
    `store_shard` adds). A collector on any node encodes; the driver stores."""
    missing = [k for k in STEP_KEYS if k not in arrays]
    if missing:
        raise ValueError(f"shard {index}: missing fields {missing}")
    episodes = split_episodes(arrays)
    data = records.encode(dict(arrays), codec)
    return data, {"index": int(index), "file": shard_name(index),
                  "frames": int(len(arrays["is_first"])), "episodes": len(episodes),
                  "seed": int(seed)}


def store_shard(folder: str | Path, data: bytes, entry: Mapping[str, Any]) -> dict[str, Any]:
    """Write an encoded shard atomically into `folder`; returns its full manifest entry."""
    path = Path(folder) / shard_name(int(entry["index"]))
    atomic_write(path, data)
    return {**entry, "file": path.name, "bytes": len(data),
            "checksum": "sha256:" + hashlib.sha256(data).hexdigest()}


def write_shard(folder: str | Path, index: int, seed: int, arrays: Mapping[str, np.ndarray],
                codec: str = "lz4") -> dict[str, Any]:
    """Write one shard atomically; returns its manifest entry."""
    return store_shard(folder, *encode_shard(index, seed, arrays, codec))


def read_shard(folder: str | Path, entry: Mapping[str, Any], verify: bool = True
               ) -> dict[str, np.ndarray]:
    """The arrays of the shard a manifest `entry` names; `CorruptShard` naming the file if it is
    missing, does not match its checksum, does not decode, or disagrees with the entry."""
    name = str(entry["file"])
    path = Path(folder) / name
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CorruptShard(f"{name}: cannot read ({err.strerror})") from None
    if verify and "checksum" in entry:
        import hashlib

        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if digest != entry["checksum"]:
            raise CorruptShard(f"{name}: checksum mismatch (file altered or truncated)")
    try:
        arrays = records.decode(data)
    except records.CorruptRecord as err:
        raise CorruptShard(f"{name}: {err}") from None
    missing = [k for k in STEP_KEYS if k not in arrays]
    if missing:
        raise CorruptShard(f"{name}: missing fields {missing}")
    frames = len(arrays["is_first"])
    if any(len(arrays[k]) != frames for k in STEP_KEYS):
        raise CorruptShard(f"{name}: fields have different lengths")
    if frames != int(entry["frames"]):
        raise CorruptShard(f"{name}: holds {frames} frames, the manifest says {entry['frames']}")
    try:
        episodes = len(split_episodes(arrays))
    except ValueError as err:
        raise CorruptShard(f"{name}: {err}") from None
    if episodes != int(entry["episodes"]):
        raise CorruptShard(f"{name}: holds {episodes} episodes, the manifest says "
                           f"{entry['episodes']}")
    return arrays


# -- manifest -----------------------------------------------------------------------------------


def write_manifest(folder: str | Path, manifest: Mapping[str, Any]) -> Path:
    """Rewrite manifest.json atomically, with shards sorted and totals recomputed."""
    shards = sorted(manifest["shards"], key=lambda e: e["index"])
    out = {**manifest, "shards": shards, "frames": sum(e["frames"] for e in shards),
           "episodes": sum(e["episodes"] for e in shards)}
    path = Path(folder) / MANIFEST
    atomic_write(path, json.dumps(out, indent=1) + "\n")
    return path


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """Load and check the manifest (format, unique indices and files, totals)."""
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"{path}: no manifest; is {folder} a `diswm pretrain collect` "
                            "folder?") from None
    except (OSError, ValueError) as err:
        raise ManifestError(f"{path}: unreadable manifest: {err}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ManifestError(f"{path}: not a {FORMAT} manifest")
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        raise ManifestError(f"{path}: 'shards' must be a list")
    need = ("index", "file", "frames", "episodes", "seed", "checksum")
    for entry in shards:
        if not isinstance(entry, dict) or any(k not in entry for k in need):
            raise ManifestError(f"{path}: shard entry {entry!r} lacks one of {need}")
        if entry["file"] != shard_name(entry["index"]):
            raise ManifestError(f"{path}: shard {entry['index']} names file {entry['file']!r}")
    indices = [e["index"] for e in shards]
    if len(set(indices)) != len(indices):
        raise ManifestError(f"{path}: duplicate shard indices")
    if manifest.get("frames") != sum(e["frames"] for e in shards):
        raise ManifestError(f"{path}: 'frames' {manifest.get('frames')} != the shards' sum "
                            f"{sum(e['frames'] for e in shards)}")
    return manifest


def verify(folder: str | Path) -> list[str]:
    """Read every shard the manifest lists; returns one problem line per bad shard (empty = ok)."""
    manifest = read_manifest(folder)
    problems = []
    for entry in manifest["shards"]:
        try:
            read_shard(folder, entry)
        except CorruptShard as err:
            problems.append(str(err))
    return problems


def iter_shards(folder: str | Path, verify: bool = True) -> Iterator[tuple[dict, dict]]:
    """(entry, arrays) for every shard in index order."""
    manifest = read_manifest(folder)
    for entry in manifest["shards"]:
        yield entry, read_shard(folder, entry, verify=verify)


__all__ = ["FORMAT", "MANIFEST", "CorruptShard", "ManifestError", "iter_shards", "read_manifest",
           "read_shard", "shard_name", "shard_seed", "verify", "write_manifest", "write_shard"]
