"""Precompute the decoders' caption embeddings (the stage-2/3 L2 targets) for the datasets of the catalog.

Records name their targets as `{image,video,audio}_captions` + `{..}_caption_embeddings` (a string or a list each,
paired by position; spec 3.2). Each embedding is the configured decoder's own text-encoder output for the caption:
SD / ZeroScope last hidden state (77, D), AudioLDM normalised CLAP `text_embeds` (512,). Finished files are skipped, so
an interrupted run simply continues.

    written = cache_caption_embeddings(records, Modality.IMAGE, decoder, embed_dir, batch_size=64)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from nextgpt.constants import MODALITIES, Modality

logger = logging.getLogger(__name__)


def iter_caption_targets(records: Iterable[dict[str, Any]], modality: Modality) -> Iterator[tuple[str, str]]:
    """Yield (caption, embedding file name) pairs of one modality from official-format records.

    Raises:
        ValueError: a record whose caption and embedding-name lists differ in length.
    """
    for index, record in enumerate(records):
        captions = record.get(f"{modality.value}_captions")
        names = record.get(f"{modality.value}_caption_embeddings")
        if captions is None or names is None:
            continue
        captions = [captions] if isinstance(captions, str) else list(captions)
        names = [names] if isinstance(names, str) else list(names)
        if len(captions) != len(names):
            raise ValueError(
                f"record {index} has {len(captions)} {modality.value}_captions but {len(names)} "
                f"{modality.value}_caption_embeddings; they pair by position"
            )
        yield from zip(captions, names, strict=True)


def record_modalities(records: list[dict[str, Any]]) -> list[Modality]:
    """Modalities that have caption targets in these records."""
    return [m for m in MODALITIES if any(f"{m.value}_captions" in r for r in records)]


def cache_caption_embeddings(
    records: list[dict[str, Any]],
    modality: Modality,
    decoder: Any,
    embed_dir: Path,
    batch_size: int = 64,
) -> int:
    """Encode every not-yet-cached caption of one modality and write one `.npy` per embedding name.

    Args:
        records: official-format records.
        modality: which targets.
        decoder: the loaded decoder of that modality (its `encode_captions` defines the target space).
        embed_dir: output folder.
        batch_size: captions per text-encoder call.

    Returns:
        Number of files written (already present ones are skipped).
    """
    from nextgpt.data.embeddings import caption_embedding_path, save_caption_embedding

    embed_dir = Path(embed_dir)
    embed_dir.mkdir(parents=True, exist_ok=True)
    todo: dict[Path, str] = {}
    for caption, name in iter_caption_targets(records, modality):
        path = caption_embedding_path(embed_dir, name)
        if not path.is_file():
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
        embed_dir,
        sum(1 for _ in iter_caption_targets(records, modality)) - len(items),
    )
    return len(items)
