"""Precomputed ImageBind features: the on-disk cache format and its reader (the writer is in feature_writer.py).

The frozen encoder maps every input media file to the same vector at every epoch, so preprocess_features.py runs it
once per file and training reads the vectors instead (`data.feature_cache_dir`). One folder per catalog dataset:

    <feature_cache_dir>/<dataset>/manifest.json          format version, encoder identity, dtype, width, shard list
    <feature_cache_dir>/<dataset>/shard-00000.safetensors "features" (rows, out_embed_dim) float16 + row index

Each shard's safetensors metadata holds the index of the rows it added: media key (path relative to the dataset's
media folder of that modality) -> sha256 of the file bytes, size, mtime and (shard, row). Shards are appended, never
rewritten, and later shards win; the index lives in the shards rather than in one big JSON so that each flush stays
small for caches of millions of files.

    cache = load_feature_cache(Path("data/features"), "cc3m_enc", cfg.model.encoder)
    vector = cache.lookup(Modality.IMAGE, "000/001312382.jpg")      # (out_embed_dim,) float32, or None
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePath
from typing import Any, NamedTuple

import torch
from safetensors import safe_open

from nextgpt.config import ImageBindConfig
from nextgpt.constants import Modality

logger = logging.getLogger(__name__)

FORMAT_NAME = "nextgpt-imagebind-features"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
PARTS_DIR = "parts"
"""Subfolder of a dataset cache where ranks writing in parallel each keep a cache of their own share
(`nextgpt.jobs.feature_cache`), until they are merged into the dataset's cache."""
FEATURES_KEY = "features"
STORAGE_DTYPE = torch.float16
"""ImageBind vectors are unit length (clip means of unit vectors for video/audio), so float16 keeps ~3 significant
digits with no range risk, more than the bf16 the projector runs in on GPU, at half the size of float32
(CC3M: 3.3M x 1024 x 2 B = 6.8 GB)."""
CHECKPOINT_PROBE_BYTES = 1 << 20
"""The encoder checkpoint is identified by name, size and sha256 of its first and last MiB (hashing all 4.8 GB of
imagebind_huge.pth at every training start would cost tens of seconds)."""
IDENTITY_EXCLUDED_FIELDS = ("checkpoint_path", "dtype")
"""ImageBindConfig fields left out of the identity: the path is replaced by the file's identity (caches move between
machines), and the compute dtype only changes rounding (a cache made in float32 serves a bf16 run at least as well as
one made in bf16), so it is recorded as `encoder_dtype` but not compared."""
_HASH_CHUNK = 1 << 22
REBUILD_HINT = "re-run preprocess_features.py with this config for dataset {name} (it rebuilds the cache)"


class FeatureCacheError(ValueError):
    """The cache on disk does not fit the config (other encoder, width or format) or is damaged."""


class FileStamp(NamedTuple):
    """Content key of one media file: sha256 of its bytes, plus size and mtime to skip re-hashing unchanged files."""

    sha256: str
    size: int
    mtime_ns: int


def unchanged_since(stamp: FileStamp, path: Path) -> bool:
    """Whether `path` still has the size and modification time it had when `stamp` was taken (no hashing).

    Raises:
        OSError: the file cannot be stat-ed.
    """
    stat = os.stat(path)
    return (stat.st_size, stat.st_mtime_ns) == (stamp.size, stamp.mtime_ns)


class CachedRow(NamedTuple):
    """Where one media file's vector lives, with the stamp of the file it was computed from."""

    stamp: FileStamp
    shard: int
    row: int


def file_sha256(path: Path, limit: int | None = None, from_end: bool = False) -> str:
    """sha256 of a file's bytes (or of its first / last `limit` bytes).

    Raises:
        FileNotFoundError / OSError: unreadable file.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        if limit is not None and from_end:
            handle.seek(max(0, os.fstat(handle.fileno()).st_size - limit))
        remaining = limit
        while remaining is None or remaining > 0:
            chunk = handle.read(_HASH_CHUNK if remaining is None else min(_HASH_CHUNK, remaining))
            if not chunk:
                break
            digest.update(chunk)
            remaining = None if remaining is None else remaining - len(chunk)
    return digest.hexdigest()


def stamp_file(path: Path) -> FileStamp:
    """The content key of a media file (reads the whole file).

    Raises:
        FileNotFoundError / OSError: unreadable file.
    """
    stat = os.stat(path)
    return FileStamp(file_sha256(path), stat.st_size, stat.st_mtime_ns)


def encoder_identity(cfg: ImageBindConfig) -> dict[str, Any]:
    """Everything that decides the vector of a media file: checkpoint identity and every size/preprocessing field.

    Args:
        cfg: `model.encoder`; its checkpoint file must exist.

    Returns:
        JSON-ready dict: `checkpoint` {name, size, head_sha256, tail_sha256} and the ImageBindConfig fields except
        `IDENTITY_EXCLUDED_FIELDS`.

    Raises:
        ValueError: no checkpoint path set.
        FileNotFoundError: the checkpoint does not exist.
    """
    if cfg.checkpoint_path is None:
        raise ValueError("model.encoder.checkpoint_path is not set; the feature cache is tied to the encoder file")
    path = Path(cfg.checkpoint_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"ImageBind checkpoint {path} not found; it identifies the feature cache, set model.encoder.checkpoint_path"
        )
    identity: dict[str, Any] = {
        "checkpoint": {
            "name": path.name,
            "size": path.stat().st_size,
            "head_sha256": file_sha256(path, CHECKPOINT_PROBE_BYTES),
            "tail_sha256": file_sha256(path, CHECKPOINT_PROBE_BYTES, from_end=True),
        }
    }
    for item in dataclasses.fields(cfg):
        if item.name not in IDENTITY_EXCLUDED_FIELDS:
            identity[item.name] = getattr(cfg, item.name)
    return json.loads(json.dumps(identity))  # tuples -> lists, as a manifest read back holds them


def media_key(folder: Path | None, path: Path) -> str:
    """Cache key of a media file: its path relative to the dataset's folder of that modality, with '/' separators.

    Relative keys keep a cache valid when the data tree moves (another machine, another mount point).

    Raises:
        ValueError: no folder, or the file is not inside `folder`.
    """
    if folder is None:
        raise ValueError(f"media file {path} has no dataset folder to be relative to; set the catalog's *_dir")
    try:
        return PurePath(path).relative_to(folder).as_posix()
    except ValueError as err:
        raise ValueError(f"media file {path} is not inside the dataset folder {folder}; fix the catalog") from err


def dataset_cache_dir(cache_dir: Path, dataset_name: str) -> Path:
    """Folder of one dataset's cache."""
    return Path(cache_dir) / dataset_name


def expected_manifest(dataset_name: str, encoder_cfg: ImageBindConfig) -> dict[str, Any]:
    """The manifest a cache written now with `encoder_cfg` has (no shards yet)."""
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "dataset": dataset_name,
        "dtype": str(STORAGE_DTYPE).removeprefix("torch."),
        "dim": encoder_cfg.out_embed_dim,
        "encoder": encoder_identity(encoder_cfg),
        "encoder_dtype": encoder_cfg.dtype,
        "shards": [],
    }


def identity_field_modalities(name: str) -> set[str] | None:
    """Modalities whose vectors an encoder identity field changes (None: all of them).

    An image-only cache stays valid when only the audio settings change (re-encoding CC3M for that would cost hours).
    Unknown (future) fields count for every modality, which is the safe side.
    """
    if name.startswith("audio_"):
        return {Modality.AUDIO.value}
    if name.startswith("video_"):
        return {Modality.VIDEO.value}
    if name.startswith("vision_") or name == "image_size":
        return {Modality.IMAGE.value, Modality.VIDEO.value}
    return None


def manifest_mismatch(found: dict[str, Any], expected: dict[str, Any], modalities: set[str] | None) -> list[str]:
    """The manifest fields that differ, as "key: cached != expected" strings (empty when the cache fits).

    Args:
        found: the manifest on disk.
        expected: the manifest the current config would write.
        modalities: modalities the cache holds vectors of; encoder fields of other modalities are not compared
            (None compares every field).
    """
    problems = []
    for key in ("format", "version", "dtype", "dim"):
        if found.get(key) != expected[key]:
            problems.append(f"{key}: {found.get(key)!r} != {expected[key]!r}")
    found_encoder = found.get("encoder") if isinstance(found.get("encoder"), dict) else {}
    for key, value in expected["encoder"].items():
        relevant = identity_field_modalities(key)
        if relevant is not None and modalities is not None and not relevant & modalities:
            continue
        if found_encoder.get(key) != value:
            shown, wanted = found_encoder.get(key), value
            if key == "checkpoint":  # name the files; the sizes and hashes would say nothing to a reader
                shown, wanted = shown.get("name") if isinstance(shown, dict) else shown, value["name"]
            detail = "" if shown != wanted else " (same name, different file)"
            problems.append(f"encoder.{key}: {shown!r} != {wanted!r}{detail}")
    return problems


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder, then rename over `path` (all or nothing)."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp_name))
        os.chmod(tmp_name, 0o644)  # mkstemp makes 0600 files; a shared cache must be readable by other users
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """A dataset cache's manifest (None when there is none).

    Raises:
        FeatureCacheError: unreadable manifest.
    """
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FeatureCacheError(f"feature cache manifest {path} is not valid JSON ({err}); delete {folder}") from err
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        raise FeatureCacheError(f"feature cache manifest {path} has no shard list; delete {folder}")
    return manifest


class ShardIndex:
    """Media key -> row index of one dataset cache, replayed from the shard metadata in shard order."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], CachedRow] = {}
        self.failed: dict[tuple[str, str], str] = {}

    def apply(self, entries: dict[str, dict[str, list]], failed: dict[str, dict[str, str]]) -> None:
        """Replay one shard's index: new rows replace older ones, failures remove them."""
        for modality, by_key in entries.items():
            for key, (sha256, size, mtime_ns, shard, row) in by_key.items():
                self.rows[(modality, key)] = CachedRow(FileStamp(sha256, size, mtime_ns), shard, row)
                self.failed.pop((modality, key), None)
        for modality, by_key in failed.items():
            for key, reason in by_key.items():
                self.rows.pop((modality, key), None)
                self.failed[(modality, key)] = reason

    def modalities(self) -> set[str]:
        """Modalities that have at least one cached vector."""
        return {modality for modality, _ in self.rows}


def open_shards(folder: Path, manifest: dict[str, Any], hint: str) -> tuple[list[Any], ShardIndex]:
    """Open every listed shard (header only; tensors are memory-mapped) and replay their indexes."""
    handles, index = [], ShardIndex()
    for number, shard in enumerate(manifest["shards"]):
        path = folder / shard["file"]
        try:
            handle = safe_open(str(path), framework="pt")
            shape = handle.get_slice(FEATURES_KEY).get_shape()
            metadata = handle.metadata() or {}
            entries, failed = json.loads(metadata["entries"]), json.loads(metadata["failed"])
        except (OSError, KeyError, ValueError, RuntimeError) as err:
            raise FeatureCacheError(f"feature cache shard {path} is missing or damaged ({err}); {hint}") from err
        if list(shape) != [shard["rows"], manifest["dim"]]:
            raise FeatureCacheError(f"feature cache shard {path} holds {shape}, manifest says {shard['rows']}; {hint}")
        if any(row[3] > number for by_key in entries.values() for row in by_key.values()):
            raise FeatureCacheError(f"feature cache shard {path} points at a later shard; {hint}")
        handles.append(handle)
        index.apply(entries, failed)
    return handles, index


class FeatureCache:
    """Read-only view of one dataset's cache (tensors are read lazily from memory-mapped shards).

    Build it with `load_feature_cache`. Safe to use in DataLoader workers: shard handles are reopened per process.
    """

    def __init__(self, folder: Path, dataset_name: str, manifest: dict[str, Any], handles: list, index: ShardIndex):
        self.folder = folder
        self.dataset_name = dataset_name
        self.manifest = manifest
        self._handles = dict(enumerate(handles))
        self._rows, self._failed = index.rows, index.failed
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self._rows)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"] = {}  # safetensors handles do not pickle; reopened on first use
        return state

    def _shard(self, number: int) -> Any:
        if self._pid != os.getpid():  # a forked DataLoader worker opens its own handles
            self._handles, self._pid = {}, os.getpid()
        if number not in self._handles:
            self._handles[number] = safe_open(str(self.folder / self.manifest["shards"][number]["file"]), "pt")
        return self._handles[number]

    def lookup(self, modality: Modality, key: str) -> torch.Tensor | None:
        """The cached vector of a media file as float32 (out_embed_dim,), or None when it is not cached."""
        cached = self._rows.get((modality.value, key))
        if cached is None:
            return None
        return self._shard(cached.shard).get_slice(FEATURES_KEY)[cached.row].float()  # (D,) float16 -> float32

    def entries(self) -> Iterator[tuple[Modality, str, FileStamp]]:
        """Every cached (modality, media key, file stamp), in no particular order."""
        for (modality, key), cached in self._rows.items():
            yield Modality(modality), key, cached.stamp

    def failures(self) -> Iterator[tuple[Modality, str, str]]:
        """Every (modality, media key, reason) recorded as unreadable."""
        for (modality, key), reason in self._failed.items():
            yield Modality(modality), key, reason

    def stamp(self, modality: Modality, key: str) -> FileStamp | None:
        """The stamp of the file as cached, None when it is not cached."""
        cached = self._rows.get((modality.value, key))
        return None if cached is None else cached.stamp

    def missing_reason(self, modality: Modality, key: str) -> str:
        """One line saying why `key` has no vector and what to run."""
        failure = self._failed.get((modality.value, key))
        where = f"the ImageBind feature cache {self.folder}"
        if failure is not None:
            return f"not in {where}: preprocess_features.py could not read it ({failure}); fix the file and re-run it"
        return f"{modality.value} file {key} is not in {where}; run preprocess_features.py for {self.dataset_name}"


def load_feature_cache(
    cache_dir: Path, dataset_name: str, encoder_cfg: ImageBindConfig, warn_unmerged: bool = True
) -> FeatureCache:
    """Open one dataset's feature cache and check that it was written by the configured encoder.

    Args:
        cache_dir: `data.feature_cache_dir`.
        dataset_name: catalog name (the cache's subfolder).
        encoder_cfg: `model.encoder`; the checkpoint file must exist (it identifies the cache).
        warn_unmerged: warn when parts written in parallel wait to be merged (their files count as missing); off for
            the parts themselves, which read the cache while they are being written.

    Returns:
        The reader.

    Raises:
        FileNotFoundError: no cache for this dataset.
        FeatureCacheError: the cache was written by another encoder / preprocessing, or is damaged.
    """
    folder = dataset_cache_dir(cache_dir, dataset_name)
    manifest = read_manifest(folder)
    hint = REBUILD_HINT.format(name=dataset_name)
    if manifest is None:
        raise FileNotFoundError(
            f"no ImageBind feature cache for dataset {dataset_name} in {folder}; run preprocess_features.py for it "
            "or unset data.feature_cache_dir"
        )
    handles, index = open_shards(folder, manifest, hint)
    if warn_unmerged and (folder / PARTS_DIR).is_dir():
        logger.warning(
            "feature cache %s has parts written in parallel that are not merged yet (%s); their files count as "
            "missing until `preprocess_features.py --merge-parts` merges them",
            folder,
            folder / PARTS_DIR,
        )
    problems = manifest_mismatch(manifest, expected_manifest(dataset_name, encoder_cfg), index.modalities())
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise FeatureCacheError(f"feature cache {folder} is stale: {problems[0]}{more}; {hint}")
    return FeatureCache(folder, dataset_name, manifest, handles, index)
