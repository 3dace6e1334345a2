"""Write a dataset's ImageBind feature cache (format: nextgpt.data.features) in atomic, append-only shards.

Each flush writes one shard and then rewrites the small manifest listing it, both through a temporary file and
`os.replace`: a run killed at any point leaves every listed shard complete (an unlisted leftover is removed by the
next writer), and a rerun resumes after the last listed shard.

    with FeatureCacheWriter(Path("data/features"), "cc3m_enc", cfg.model.encoder) as writer:
        if not writer.is_current(Modality.IMAGE, key, path):
            writer.add(Modality.IMAGE, key, stamp_file(path), vector)   # vector: (out_embed_dim,)
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from nextgpt.config import ImageBindConfig
from nextgpt.constants import Modality
from nextgpt.data.features import (
    FEATURES_KEY,
    MANIFEST_FILE,
    STORAGE_DTYPE,
    FeatureCacheError,
    FileStamp,
    ShardIndex,
    atomic_write,
    dataset_cache_dir,
    expected_manifest,
    manifest_mismatch,
    open_shards,
    read_manifest,
    stamp_file,
    unchanged_since,
)

logger = logging.getLogger(__name__)

DEFAULT_SHARD_ROWS = 4096
"""Rows per shard: 8 MB at width 1024; a killed run loses at most this many encoded files."""


@dataclass
class _Pending:
    vectors: list[torch.Tensor] = dataclasses.field(default_factory=list)
    entries: dict[str, dict[str, list]] = dataclasses.field(default_factory=dict)
    failed: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.vectors or self.entries or self.failed)


class FeatureCacheWriter:
    """Appends vectors to one dataset's cache in atomic shards; resumes an existing cache of the same encoder.

    A cache written by another encoder (see `manifest_mismatch`) is replaced, with a warning listing what changed.
    One writer per dataset folder at a time.

    Args:
        cache_dir: `data.feature_cache_dir`.
        dataset_name: catalog name.
        encoder_cfg: `model.encoder` (its identity goes into the manifest).
        shard_rows: vectors per shard; each full shard is flushed to disk at once.
    """

    def __init__(
        self, cache_dir: Path, dataset_name: str, encoder_cfg: ImageBindConfig, shard_rows: int = DEFAULT_SHARD_ROWS
    ) -> None:
        if shard_rows < 1:
            raise ValueError(f"shard_rows must be >= 1, got {shard_rows}")
        self.folder = dataset_cache_dir(cache_dir, dataset_name)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.shard_rows = shard_rows
        expected = expected_manifest(dataset_name, encoder_cfg)
        self.manifest, self.index = expected, ShardIndex()
        problems = self._resume(expected)
        if problems:
            logger.warning("feature cache %s does not fit the encoder (%s); rebuilding it", self.folder, problems)
        self._write_manifest()  # a replaced cache stops being readable before its shards go
        self._remove_unlisted_files()
        self._pending = _Pending()

    def _resume(self, expected: dict[str, Any]) -> list[str]:
        """Take over the cache on disk when it fits `expected`; return why not otherwise (nothing there: [])."""
        try:
            found = read_manifest(self.folder)
            if found is None:
                return []
            index = open_shards(self.folder, found, "rebuilding it")[1]
        except FeatureCacheError as err:
            return [str(err)]
        problems = manifest_mismatch(found, expected, index.modalities())
        if not problems:
            # Fields of modalities without vectors may differ; the vectors added now follow the current ones.
            self.manifest, self.index = {**found, "encoder": expected["encoder"]}, index
        return problems

    def _write_manifest(self) -> None:
        text = json.dumps(self.manifest, indent=1)
        atomic_write(self.folder / MANIFEST_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    def _remove_unlisted_files(self) -> None:
        """Shards of a replaced cache, and a shard or temporary file left by a run killed before its manifest update."""
        listed = {s["file"] for s in self.manifest["shards"]} | {MANIFEST_FILE}
        for path in self.folder.iterdir():
            if path.is_file() and path.name not in listed and (path.suffix in (".safetensors", ".tmp")):
                path.unlink()

    def is_current(self, modality: Modality, key: str, path: Path) -> bool:
        """Whether the cache already holds the vector of `path` as it is now.

        Same size and mtime as when cached: yes without reading the file. Otherwise the file is hashed; same bytes
        (e.g. copied to another machine) re-point the entry at the old row with the new mtime.

        Raises:
            FileNotFoundError / OSError: the file cannot be read.
        """
        cached = self.index.rows.get((modality.value, key))
        if cached is None:
            return False
        if unchanged_since(cached.stamp, path):
            return True
        stamp = stamp_file(path)
        if stamp.sha256 != cached.stamp.sha256:
            return False
        self._record(modality, key, [*stamp, cached.shard, cached.row])
        return True

    def _record(self, modality: Modality, key: str, row: list) -> None:
        self._pending.entries.setdefault(modality.value, {})[key] = row
        self._pending.failed.get(modality.value, {}).pop(key, None)

    def add(self, modality: Modality, key: str, stamp: FileStamp, vector: torch.Tensor) -> None:
        """Queue one vector (out_embed_dim,); a full shard is written at once.

        Raises:
            ValueError: wrong width or non-finite values.
        """
        if tuple(vector.shape) != (self.manifest["dim"],) or not torch.isfinite(vector).all():
            raise ValueError(
                f"feature of {key} must be finite with shape ({self.manifest['dim']},), got {tuple(vector.shape)}; "
                "check model.encoder.out_embed_dim"
            )
        shard, row = len(self.manifest["shards"]), len(self._pending.vectors)
        self._pending.vectors.append(vector.detach().to("cpu", STORAGE_DTYPE))
        self._record(modality, key, [*stamp, shard, row])
        if len(self._pending.vectors) >= self.shard_rows:
            self.flush()

    def add_failure(self, modality: Modality, key: str, reason: str) -> None:
        """Record that a file could not be encoded (its old vector, if any, stops being served)."""
        self._pending.failed.setdefault(modality.value, {})[key] = reason
        self._pending.entries.get(modality.value, {}).pop(key, None)

    def flush(self) -> None:
        """Write the queued vectors and index changes as the next shard, then list it in the manifest."""
        if not self._pending:
            return
        pending, self._pending = self._pending, _Pending()
        name = f"shard-{len(self.manifest['shards']):05d}.safetensors"
        dim = self.manifest["dim"]
        features = torch.stack(pending.vectors) if pending.vectors else torch.zeros(0, dim, dtype=STORAGE_DTYPE)
        metadata = {"entries": json.dumps(pending.entries), "failed": json.dumps(pending.failed)}
        atomic_write(self.folder / name, lambda tmp: save_file({FEATURES_KEY: features}, str(tmp), metadata))
        self.manifest["shards"].append({"file": name, "rows": len(pending.vectors)})
        self._write_manifest()
        self.index.apply(pending.entries, pending.failed)

    def __enter__(self) -> FeatureCacheWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.flush()
