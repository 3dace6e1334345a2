"""Run the frozen ImageBind once over every input media file of a dataset and store the vectors (feature cache).

Files are found exactly as training finds them (`nextgpt.data.records.parse_record(...).input_media`), decoded in
DataLoader workers, encoded in batches of one modality without gradients, and appended to the dataset's cache
(`nextgpt.data.features`). Files already cached with the same content are skipped, so an interrupted run continues.
Unreadable files are reported and recorded as failed; the training datasets then treat them as bad samples.

    encoder = load_imagebind(cfg.model.encoder, device="cuda")
    report = cache_dataset_features(records, catalog["cc3m_enc"], "cc3m_enc", encoder, Path("data/features"))
"""

from __future__ import annotations

import logging
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
from nextgpt.data.features import FileStamp, media_key, stamp_file

logger = logging.getLogger(__name__)

_MAX_REPORTED_FAILURES = 5
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


def _files_to_encode(
    files: list[tuple[Modality, Path]],
    entry: DatasetEntryConfig,
    writer: FeatureCacheWriter,
    report: FeatureCacheReport,
) -> list[tuple[Modality, str, Path]]:
    """The files whose current content is not cached yet; files that cannot even be stat-ed are failures."""
    todo = []
    for modality, path in files:
        key = media_key(getattr(entry, f"{modality.value}_dir"), path)
        try:
            if writer.is_current(modality, key, path):
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
) -> FeatureCacheReport:
    """Encode every not-yet-cached input media file of one dataset into `<cache_dir>/<dataset_name>/`.

    Args:
        records: the dataset's annotation records.
        entry: its catalog entry (media folders).
        dataset_name: catalog name (the cache subfolder).
        encoder: the loaded frozen ImageBind (`load_imagebind`); its `cfg` is the identity written to the manifest.
        cache_dir: `data.feature_cache_dir`.
        batch_size: files per encoder call.
        num_workers: DataLoader processes decoding media (video decoding is the bottleneck on GPU).
        shard_rows: vectors per shard file.

    Returns:
        What was skipped, encoded and failed.

    Raises:
        ValueError: `batch_size` < 1, or an encoder output of the wrong width.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    report = FeatureCacheReport(dataset=dataset_name)
    # 1. The distinct input media of the records, as training reads them.
    files = input_media_files(records, entry)
    report.num_files = len(files)
    with FeatureCacheWriter(cache_dir, dataset_name, encoder.cfg, shard_rows) as writer:
        # 2. Skip what the cache already holds (resume); the rest is decoded in workers.
        todo = _files_to_encode(files, entry, writer, report)
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
