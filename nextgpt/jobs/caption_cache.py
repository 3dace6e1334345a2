"""Precompute the decoders' caption embeddings (the stage-2/3 L2 targets) for the datasets of the catalog.

Records name their targets as `{image,video,audio}_captions` + `{..}_caption_embeddings` (a string or a list each,
paired by position; spec 3.2). Each embedding is the configured decoder's own text-encoder output for the caption:
SD / ZeroScope last hidden state (77, D), AudioLDM normalised CLAP `text_embeds` (512,). Finished files are skipped, so
an interrupted run simply continues.

    written = cache_caption_embeddings(records, catalog["cc3m_dec"], Modality.IMAGE, decoder, batch_size=64)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from nextgpt.config import DatasetEntryConfig
from nextgpt.constants import MODALITIES, Modality
from nextgpt.jobs.parts import check_part, part_of

logger = logging.getLogger(__name__)


def iter_caption_targets(
    records: Iterable[dict[str, Any]], entry: DatasetEntryConfig, modality: Modality
) -> Iterator[tuple[str, Path]]:
    """Yield (caption, embedding file) pairs of one modality, read exactly as the training datasets read them.

    The records go through the same parser as training (`nextgpt.data.records.parse_record`), so every format's
    targets are found (paired `{x}_captions` lists, MosIT `{x}_list` captions of assistant-side media) under the same
    file names. Malformed records are left to the datasets, which skip and report them.
    """
    from nextgpt.data.records import MalformedRecordError, parse_record

    for record in records:
        try:
            targets = parse_record(record, entry).targets
        except MalformedRecordError:
            continue
        for target in targets:
            if target.modality is modality and target.embedding_path is not None:
                yield target.caption, target.embedding_path


def record_modalities(records: list[dict[str, Any]], entry: DatasetEntryConfig) -> list[Modality]:
    """Modalities that have caption targets in these records."""
    return [m for m in MODALITIES if next(iter_caption_targets(records, entry, m), None) is not None]


def cache_caption_embeddings(
    records: list[dict[str, Any]],
    entry: DatasetEntryConfig,
    modality: Modality,
    decoder: Any,
    batch_size: int = 64,
    part: tuple[int, int] = (0, 1),
) -> int:
    """Encode every not-yet-cached caption of one modality and write one `.npy` per embedding name.

    Each file is written atomically and names its own caption, so processes or nodes sharing the work with `part`
    write disjoint files into the same folder and need no merge.

    Args:
        records: official-format records.
        entry: their catalog entry (its caption_embed_dir receives the files).
        modality: which targets.
        decoder: the loaded decoder of that modality (its `encode_captions` defines the target space).
        batch_size: captions per text-encoder call.
        part: (i, n): only the files of part i of n (`nextgpt.jobs.parts.part_of` of the file name).

    Returns:
        Number of files written (already present ones are skipped).
    """
    from nextgpt.data.embeddings import save_caption_embedding

    check_part(part)
    todo: dict[Path, str] = {}
    total = 0
    for caption, path in iter_caption_targets(records, entry, modality):
        if part[1] > 1 and part_of(path.name, part[1]) != part[0]:
            continue
        total += 1
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            todo.setdefault(path, caption)
    items = list(todo.items())
    for start in tqdm(range(0, len(items), batch_size), desc=f"{modality.value} captions", unit="batch"):
        chunk = items[start : start + batch_size]
        with torch.no_grad():
            embeds = decoder.encode_captions([caption for _, caption in chunk])  # (N, 77, D) or (N, D)
        for (path, _), embed in zip(chunk, embeds.float().cpu().numpy(), strict=True):
            save_caption_embedding(path, embed)
    logger.info(
        "%s: wrote %d caption embeddings to %s (%d already there)",
        modality.value,
        len(items),
        entry.caption_embed_dir,
        total - len(items),
    )
    return len(items)
