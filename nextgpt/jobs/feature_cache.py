"""Run the frozen ImageBind once over every input media file of a dataset and store the vectors (feature cache).

Files are found exactly as training finds them (`nextgpt.data.records.parse_record(...).input_media`), decoded in
DataLoader workers, encoded in batches of one modality without gradients, and appended to the dataset's cache
(`nextgpt.data.features`). Files already cached with the same content are skipped, so an interrupted run continues.
Unreadable files are reported and recorded as failed; the training datasets then treat them as bad samples.

    encoder = load_imagebind(cfg.model.encoder, device="cuda")
    report = cache_dataset_features(records, catalog["cc3m_enc"], "cc3m_enc", encoder, Path("data/features"))

Several ranks or nodes share the work with `part=(i, n)`: each takes the files whose key hashes to it (`part_of`) and
writes a complete cache of its own under `<cache>/<dataset>/parts/` (nothing another rank writes), marked complete
when it ends; `merge_feature_parts` then appends the complete parts to the dataset's cache, in one process.

    cache_dataset_features(records, entry, "cc3m_enc", encoder, cache_dir, part=(rank, world_size))
    merge_feature_parts(cache_dir, "cc3m_enc", cfg.model.encoder)      # after every part finished
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from nextgpt.config import DatasetEntryConfig, ImageBindConfig
from nextgpt.constants import MODALITIES, Modality
from nextgpt.data.feature_writer import DEFAULT_SHARD_ROWS, FeatureCacheWriter
from nextgpt.data.features import (
    PARTS_DIR,
    FeatureCache,
    FeatureCacheError,
    FileStamp,
    atomic_write,
    dataset_cache_dir,
    load_feature_cache,
    media_key,
    stamp_file,
    unchanged_since,
)
from nextgpt.jobs.parts import check_part, part_of

logger = logging.getLogger(__name__)

_MAX_REPORTED_FAILURES = 5
PART_COMPLETE_FILE = "complete.json"
"""Written into a part's folder when its rank finished; only complete parts are merged."""
_READ_ERRORS = (OSError, ValueError, RuntimeError)
"""What decoding a broken or missing media file raises (FileNotFoundError is an OSError)."""


@dataclass
class FeatureCacheReport:
    """What one dataset's preprocessing did.

    Attributes:
        dataset: catalog name.
        num_files: distinct input media files the records name.
        num_already_cached: files skipped because the cache holds their current content.
        num_encoded: files encoded and written in this run.
        failures: "modality key: reason" for each file that could not be read.
    """

    dataset: str
    num_files: int = 0
    num_already_cached: int = 0
    num_encoded: int = 0
    failures: list[str] = field(default_factory=list)


@dataclass
class _Loaded:
    """One decoded file (or why it could not be decoded), as a DataLoader worker returns it."""

    modality: Modality
    key: str
    stamp: FileStamp | None
    inputs: torch.Tensor | None
    error: str | None


def input_media_files(records: Iterable[dict[str, Any]], entry: DatasetEntryConfig) -> list[tuple[Modality, Path]]:
    """Distinct user-side media files of the records, grouped by modality (first-seen order within one).

    Malformed records are left out; the training datasets report them.
    """
    from nextgpt.data.records import MalformedRecordError, parse_record

    seen: dict[tuple[Modality, Path], None] = {}
    for record in records:
        try:
            spec = parse_record(record, entry)
        except MalformedRecordError:
            continue
        for modality, path in spec.input_media:
            seen.setdefault((modality, path), None)
    return sorted(seen, key=lambda item: MODALITIES.index(item[0]))


class _MediaFiles(Dataset):
    """Stamps (sha256) and decodes each file for the encoder; never raises for a bad file."""

    def __init__(self, files: list[tuple[Modality, str, Path]], encoder_cfg: ImageBindConfig) -> None:
        self.files = files
        self.encoder_cfg = encoder_cfg

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> _Loaded:
        from nextgpt.encoders.transforms import load_media

        modality, key, path = self.files[index]
        try:
            stamp = stamp_file(path)
            inputs = load_media(modality, path, self.encoder_cfg)
        except _READ_ERRORS as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            return _Loaded(modality, key, None, None, reason)
        return _Loaded(modality, key, stamp, inputs, None)


def part_folder_name(part: int, num_parts: int) -> str:
    """The folder (under `<cache>/<dataset>/parts/`) of part `part` of `num_parts`."""
    return f"part-{part:04d}-of-{num_parts:04d}"


def _read_only_cache(cache_dir: Path, dataset_name: str, encoder_cfg: ImageBindConfig) -> FeatureCache | None:
    """The dataset's merged cache, read only (a part skips what it holds); None when there is none or it is stale."""
    try:
        return load_feature_cache(cache_dir, dataset_name, encoder_cfg, warn_unmerged=False)
    except (FileNotFoundError, FeatureCacheError):
        return None


def _unchanged(cache: FeatureCache | None, modality: Modality, key: str, path: Path) -> bool:
    """Whether `cache` holds `path` with its current size and modification time."""
    stamp = None if cache is None else cache.stamp(modality, key)
    return stamp is not None and unchanged_since(stamp, path)


def _files_to_encode(
    files: list[tuple[Modality, Path]],
    entry: DatasetEntryConfig,
    writer: FeatureCacheWriter,
    report: FeatureCacheReport,
    merged: FeatureCache | None = None,
) -> list[tuple[Modality, str, Path]]:
    """The files whose current content is not cached yet (in `writer`'s cache or, for a part, the merged one);
    files that cannot even be stat-ed are failures."""
    todo = []
    for modality, path in files:
        key = media_key(getattr(entry, f"{modality.value}_dir"), path)
        try:
            if _unchanged(merged, modality, key, path) or writer.is_current(modality, key, path):
                report.num_already_cached += 1
                continue
        except OSError as err:
            _fail(writer, report, modality, key, str(err).splitlines()[0])
            continue
        todo.append((modality, key, path))
    return todo


def _fail(writer: FeatureCacheWriter, report: FeatureCacheReport, modality: Modality, key: str, reason: str) -> None:
    writer.add_failure(modality, key, reason)
    report.failures.append(f"{modality.value} {key}: {reason}")
    if len(report.failures) <= _MAX_REPORTED_FAILURES:
        logger.warning("%s: cannot encode %s file %s (%s); skipped", report.dataset, modality.value, key, reason)


def _encode_batch(loaded: list[_Loaded], encoder: torch.nn.Module, writer: FeatureCacheWriter) -> int:
    """Encode the readable files of a loader batch, one encoder call per modality; returns how many."""
    done = 0
    for modality in MODALITIES:
        items = [item for item in loaded if item.modality is modality and item.error is None]
        if not items:
            continue
        inputs = torch.stack([item.inputs for item in items])  # N x (...) -> (N, ...)
        with torch.no_grad():
            vectors = encoder(modality, inputs)  # (N, out_embed_dim)
        for item, vector in zip(items, vectors, strict=True):
            writer.add(modality, item.key, item.stamp, vector)
        done += len(items)
    return done


def cache_dataset_features(
    records: list[dict[str, Any]],
    entry: DatasetEntryConfig,
    dataset_name: str,
    encoder: torch.nn.Module,
    cache_dir: Path,
    batch_size: int = 32,
    num_workers: int = 0,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    part: tuple[int, int] = (0, 1),
) -> FeatureCacheReport:
    """Encode every not-yet-cached input media file of one dataset into `<cache_dir>/<dataset_name>/` (or this part's
    share of them into its own folder under `parts/`, for `merge_feature_parts`).

    Args:
        records: the dataset's annotation records.
        entry: its catalog entry (media folders).
        dataset_name: catalog name (the cache subfolder).
        encoder: the loaded frozen ImageBind (`load_imagebind`); its `cfg` is the identity written to the manifest.
        cache_dir: `data.feature_cache_dir`.
        batch_size: files per encoder call.
        num_workers: DataLoader processes decoding media (video decoding is the bottleneck on GPU).
        shard_rows: vectors per shard file.
        part: (i, n): encode only the files of part i of n (`part_of`), into `parts/<part_folder_name>`; (0, 1) writes
            the dataset's cache itself.

    Returns:
        What was skipped, encoded and failed (of this part's files).

    Raises:
        ValueError: `batch_size` < 1, a bad `part`, or an encoder output of the wrong width.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_part(part)
    index, num_parts = part
    report = FeatureCacheReport(dataset=dataset_name)
    # 1. The distinct input media of the records, as training reads them (this part's share).
    files = input_media_files(records, entry)
    if num_parts > 1:
        dirs = {m: getattr(entry, f"{m.value}_dir") for m in MODALITIES}
        files = [(m, path) for m, path in files if part_of(f"{m.value}/{media_key(dirs[m], path)}", num_parts) == index]
        merged = _read_only_cache(cache_dir, dataset_name, encoder.cfg)
        target_dir, target_name = dataset_cache_dir(cache_dir, dataset_name) / PARTS_DIR, part_folder_name(*part)
    else:
        merged, target_dir, target_name = None, cache_dir, dataset_name
    report.num_files = len(files)
    with FeatureCacheWriter(target_dir, target_name, encoder.cfg, shard_rows) as writer:
        (writer.folder / PART_COMPLETE_FILE).unlink(missing_ok=True)  # a part being (re)written is not mergeable
        # 2. Skip what the cache already holds (resume); the rest is decoded in workers.
        todo = _files_to_encode(files, entry, writer, report, merged)
        loader = DataLoader(
            _MediaFiles(todo, encoder.cfg), batch_size=batch_size, num_workers=num_workers, collate_fn=list
        )
        # 3. Encode batch by batch; full shards reach the disk as they fill.
        with tqdm(total=len(todo), desc=f"{dataset_name} features", unit="file") as progress:
            for loaded in loader:
                for item in loaded:
                    if item.error is not None:
                        _fail(writer, report, item.modality, item.key, item.error)
                report.num_encoded += _encode_batch(loaded, encoder, writer)
                progress.update(len(loaded))
    if num_parts > 1:  # every vector is on disk (the writer flushed): the part can be merged
        marker = {"part": index, "num_parts": num_parts, "files": report.num_files, "encoded": report.num_encoded}
        atomic_write(writer.folder / PART_COMPLETE_FILE, lambda tmp: tmp.write_text(json.dumps(marker)))
    logger.info(
        "%s: %d input media files, %d already cached, %d encoded, %d unreadable -> %s",
        dataset_name,
        report.num_files,
        report.num_already_cached,
        report.num_encoded,
        len(report.failures),
        writer.folder,
    )
    return report


def merge_feature_parts(
    cache_dir: Path, dataset_name: str, encoder_cfg: ImageBindConfig, shard_rows: int = DEFAULT_SHARD_ROWS
) -> int:
    """Append every complete part of a dataset (written with `cache_dataset_features(part=...)`) to its cache, then
    remove those parts. One process at a time; parts still being written (no completion marker) are left alone.

    Safe to interrupt: the cache takes atomic shards and a part is removed only once all its vectors are listed in
    it, so a rerun merges what is left (a vector merged twice is simply listed again).

    Args:
        cache_dir: `data.feature_cache_dir`.
        dataset_name: catalog name.
        encoder_cfg: `model.encoder`; a part written by another encoder is refused.
        shard_rows: vectors per shard of the merged cache.

    Returns:
        The number of vectors merged.

    Raises:
        FeatureCacheError: a complete part is damaged or was written by another encoder.
    """
    parts_root = dataset_cache_dir(cache_dir, dataset_name) / PARTS_DIR
    folders = sorted(p for p in parts_root.iterdir() if p.is_dir()) if parts_root.is_dir() else []
    complete = [p for p in folders if (p / PART_COMPLETE_FILE).is_file()]
    unfinished = [p.name for p in folders if p not in complete]
    if unfinished:
        logger.warning("%s: parts %s are not complete (still running, or killed: rerun them); not merged", dataset_name,
                       unfinished)  # fmt: skip
    if not complete:
        return 0
    merged = 0
    with FeatureCacheWriter(cache_dir, dataset_name, encoder_cfg, shard_rows) as writer:
        for folder in complete:
            part = load_feature_cache(parts_root, folder.name, encoder_cfg)
            for modality, key, stamp in tqdm(list(part.entries()), desc=f"{dataset_name} merge {folder.name}"):
                writer.add(modality, key, stamp, part.lookup(modality, key))
                merged += 1
            for modality, key, reason in part.failures():
                writer.add_failure(modality, key, reason)
    for folder in complete:  # the writer has flushed: every merged vector is listed in the dataset's cache
        shutil.rmtree(folder)
    if not any(parts_root.iterdir()):
        parts_root.rmdir()
    logger.info("%s: merged %d vectors from %d parts into %s", dataset_name, merged, len(complete), writer.folder)
    return merged
