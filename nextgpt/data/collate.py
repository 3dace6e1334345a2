"""Collate dataset items into a `NextGPTBatch`: truncation at round boundaries, right padding, media stacking.

The length that counts is the length after splicing: every media sentinel becomes `tokens_per_media` rows
(1 for the linear/mlp input projector, 8 for group). A sample longer than `max_length` is cut after the last
complete assistant answer that fits, so neither a media placeholder nor a signal span is ever split; the media,
caption embeddings and denoising targets of the dropped rounds are dropped with it. A sample whose first answer
does not fit is skipped ("too long"). When every item of a batch is skipped, `CollatedBatch.batch` is None and the
training loop should skip the step (the counts are still reported).

    collate = Collator(pad_id=tokenizer.pad_token_id or 0, max_length=512, tokens_per_media=8)
    loader = DataLoader(concat, batch_sampler=sampler, collate_fn=collate)
    for collated in loader:
        if collated.batch is None: continue   # every sample was skipped
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from nextgpt.constants import IGNORE_INDEX, MODALITIES, SENTINEL_IDS, Modality
from nextgpt.data.batch import NextGPTBatch
from nextgpt.data.datasets import SkippedSample
from nextgpt.data.layout import build_layout, shared_prefix_length, strip_prefix
from nextgpt.data.packing import pack_first_fit

logger = logging.getLogger(__name__)


@dataclass
class CollatedBatch:
    """What the collator returns.

    Attributes:
        batch: the model batch, or None when every item was skipped.
        num_samples: items in the batch (kept ones).
        num_skipped: items dropped (bad samples from the dataset plus "too long" ones).
        skip_reasons: one "dataset[index]: reason (path)" line per skipped item.
        skipped: (dataset name, path or None) of each skipped item, in `skip_reasons` order.
        num_truncated: kept items that lost trailing rounds to fit `max_length`.
        num_tokenization_mismatches: kept items whose per-segment ids differ from one-piece tokenisation.
        datasets: the dataset name of each kept sample, in batch order (packed order when packing).
    """

    batch: NextGPTBatch | None
    num_samples: int = 0
    num_skipped: int = 0
    skip_reasons: list[str] = field(default_factory=list)
    skipped: list[tuple[str, Path | None]] = field(default_factory=list)
    num_truncated: int = 0
    num_tokenization_mismatches: int = 0
    datasets: list[str] = field(default_factory=list)

    def pin_memory(self) -> CollatedBatch:
        """The same result with the batch in page-locked memory (the DataLoader's pin thread calls this with
        `pin_memory=True`), so the loop copies it to the GPU without waiting."""
        return replace(self, batch=None if self.batch is None else self.batch.pin_memory())


def answer_ends(labels: torch.Tensor) -> list[int]:
    """Positions just after each assistant answer: the end of every maximal run of supervised labels.

    Args:
        labels: (L,) labels with `IGNORE_INDEX` outside the answers.

    Returns:
        Sorted cut positions; cutting `ids[:end]` keeps whole rounds only.
    """
    supervised = (labels != IGNORE_INDEX).tolist()
    return [i + 1 for i, flag in enumerate(supervised) if flag and (i + 1 == len(supervised) or not supervised[i + 1])]


class Collator:
    """Callable turning a list of dataset items (dicts or `SkippedSample`s) into a `CollatedBatch`.

    Args:
        pad_id: token id used for padding input_ids (its labels are `IGNORE_INDEX`, its mask 0).
        max_length: longest sequence after splicing (config `model.llm.max_length`).
        tokens_per_media: LLM rows each media item becomes (the input projector's `num_tokens`).
        packing: put several samples into each row of at most `max_length` (after splicing), first-fit decreasing,
            instead of one padded row per sample (`data.packing`); the batch then carries per-sample `position_ids`
            and lists its samples (media, caption embeddings, `datasets`) in packed order.
        prefix_ids: the template's opening (`system_prefix_ids`) to strip from every sample when the model serves it
            from its cache (`train.prefix_reuse`); the part every kept sample shares is stripped (after `max_length`
            was checked on the whole sample) and recorded in the batch's layout. Empty: nothing is stripped.

    The batch's `layout` (`nextgpt.data.layout`) is computed here, on the host, so the training step never waits on
    the GPU to learn the samples' lengths.

    Raises:
        ValueError: on construction with a non-positive `max_length` / `tokens_per_media` or a negative pad id.
    """

    def __init__(
        self,
        pad_id: int,
        max_length: int,
        tokens_per_media: int = 1,
        packing: bool = False,
        prefix_ids: Sequence[int] = (),
    ) -> None:
        if max_length < 1 or tokens_per_media < 1 or pad_id < 0:
            raise ValueError(
                f"Collator needs max_length >= 1, tokens_per_media >= 1 and pad_id >= 0, got {max_length}, "
                f"{tokens_per_media}, {pad_id}"
            )
        self.pad_id = pad_id
        self.max_length = max_length
        self.tokens_per_media = tokens_per_media
        self.packing = packing
        self.prefix_ids = tuple(prefix_ids)
        self._warned_incomplete: set[tuple[str, Modality]] = set()

    def spliced_lengths(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Length after splicing of every prefix: (L,) ids -> (L,) cumulative rows (prefix [:i+1])."""
        is_media = input_ids < 0
        rows = torch.where(is_media, self.tokens_per_media, 1)
        return rows.cumsum(dim=0)

    def fit_item(self, item: dict[str, Any]) -> tuple[dict[str, Any] | None, bool]:
        """Cut an item after its last whole round that fits `max_length` (after splicing).

        Args:
            item: a dataset item.

        Returns:
            (the item, possibly cut; None when even the first answer does not fit) and whether it was cut.
        """
        input_ids, labels = item["input_ids"], item["labels"]
        cumulative = self.spliced_lengths(input_ids)
        if int(cumulative[-1]) <= self.max_length:
            return item, False
        ends = [end for end in answer_ends(labels) if int(cumulative[end - 1]) <= self.max_length]
        if not ends:
            return None, False
        cut = ends[-1]
        kept = dict(item)
        kept["input_ids"], kept["labels"] = input_ids[:cut], labels[:cut]
        kept["length"] = cut
        for key in ("media", "media_features"):  # raw media or cached ImageBind vectors, placeholder order
            kept[key] = {}
            for modality, tensors in item.get(key, {}).items():
                num_kept = int((input_ids[:cut] == SENTINEL_IDS[modality]).sum())
                if num_kept:
                    kept[key][modality] = tensors[:num_kept]
        starts = {m: [s for s in item["signal_span_starts"].get(m, []) if s < cut] for m in MODALITIES}
        kept["signal_span_starts"] = {m: s for m, s in starts.items() if s}
        for key in ("caption_embeds", "denoise_targets"):
            kept[key] = {m: v[: len(starts[m])] for m, v in item[key].items() if starts[m]}
        return kept, True

    def __call__(self, items: Sequence[dict[str, Any] | SkippedSample]) -> CollatedBatch:
        result = CollatedBatch(batch=None)
        kept: list[dict[str, Any]] = []
        # 1. Drop skipped items; cut or drop the ones too long after splicing.
        for item in items:
            if isinstance(item, SkippedSample):
                result.skip_reasons.append(_reason(item))
                result.skipped.append((item.dataset, item.path))
                continue
            fitted, truncated = self.fit_item(item)
            if fitted is None:
                longest = int(self.spliced_lengths(item["input_ids"])[-1])
                result.skip_reasons.append(
                    f"{item['dataset']}[{item['index']}]: too long ({longest} rows after splicing, first answer "
                    f"does not fit max_length={self.max_length})"
                )
                result.skipped.append((item["dataset"], None))
                continue
            result.num_truncated += int(truncated)
            kept.append(fitted)
        result.num_skipped = len(result.skip_reasons)
        result.num_samples = len(kept)
        result.num_tokenization_mismatches = sum(bool(item.get("tokenization_mismatch")) for item in kept)
        num_prefix = shared_prefix_length(self.prefix_ids, kept) if self.prefix_ids else 0
        kept = [strip_prefix(item, num_prefix) for item in kept]
        kept, rows = self._pack(kept)
        result.datasets = [item["dataset"] for item in kept]
        if kept:
            result.batch = self._build_batch(kept, rows, self.prefix_ids[:num_prefix])
        return result

    def _pack(self, items: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[list[int]]]:
        """Items in packed order and the item indices (into that order) of every row."""
        if not self.packing:
            return items, [[i] for i in range(len(items))]
        lengths = [int(self.spliced_lengths(item["input_ids"])[-1]) for item in items]
        bins = pack_first_fit(lengths, self.max_length)
        ordered = [items[i] for row in bins for i in row]
        starts = [sum(len(row) for row in bins[:r]) for r in range(len(bins))]
        return ordered, [list(range(start, start + len(row))) for start, row in zip(starts, bins, strict=True)]

    def _build_batch(
        self, items: list[dict[str, Any]], rows: list[list[int]], prefix_ids: tuple[int, ...]
    ) -> NextGPTBatch:
        # 2. Right-pad ids / labels / mask; packed rows concatenate their samples, positions restarting at 0.
        row_lengths = [sum(len(items[i]["input_ids"]) for i in row) for row in rows]
        max_len = max(row_lengths)
        input_ids = torch.full((len(rows), max_len), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), max_len), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), max_len), dtype=torch.long)
        position_ids = torch.zeros((len(rows), max_len), dtype=torch.long) if self.packing else None
        for row, members in enumerate(rows):
            start = 0
            for i in members:
                length = len(items[i]["input_ids"])
                input_ids[row, start : start + length] = items[i]["input_ids"]
                labels[row, start : start + length] = items[i]["labels"]
                if position_ids is not None:
                    position_ids[row, start : start + length] = torch.arange(length)
                start += length
            attention_mask[row, :start] = 1
        # 3. Media, caption embeddings and denoising targets: row-major, placeholder / span order within a row.
        num_spans = {m: sum(len(item["signal_span_starts"].get(m, [])) for item in items) for m in MODALITIES}
        return NextGPTBatch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            labels=labels,
            position_ids=position_ids,
            media=self._stack(items, "media", None),
            media_features=self._stack(items, "media_features", None),
            caption_embeds=self._stack(items, "caption_embeds", num_spans),
            denoise_targets=self._stack(items, "denoise_targets", num_spans),
            layout=build_layout(input_ids, attention_mask, position_ids, self.tokens_per_media, prefix_ids),
        )

    def _stack(
        self, items: list[dict[str, Any]], key: str, num_spans: dict[Modality, int] | None
    ) -> dict[Modality, torch.Tensor]:
        """Stack one per-modality list field across rows; span-aligned fields are kept only when complete."""
        stacked: dict[Modality, torch.Tensor] = {}
        for modality in MODALITIES:
            tensors = [t for item in items for t in item.get(key, {}).get(modality, [])]
            if not tensors:
                continue
            if num_spans is not None and len(tensors) != num_spans[modality]:
                # The model pairs these with signal spans one to one; a partial set cannot be aligned.
                if (key, modality) not in self._warned_incomplete:
                    self._warned_incomplete.add((key, modality))
                    logger.warning(
                        "batch has %d %s signal spans but only %d %s; leaving %s out of such batches",
                        num_spans[modality],
                        modality.value,
                        len(tensors),
                        key,
                        key,
                    )
                continue
            shapes = {tuple(t.shape) for t in tensors}
            if len(shapes) != 1:
                raise ValueError(
                    f"{modality.value} {key} have different shapes {sorted(shapes)} in one batch; "
                    "all items of a modality must be preprocessed with the same settings"
                )
            stacked[modality] = torch.stack(tensors)  # N x (...) -> (N, ...)
        return stacked


def _reason(skipped: SkippedSample) -> str:
    where = f" ({skipped.path})" if skipped.path is not None else ""
    return f"{skipped.dataset}[{skipped.index}]: {skipped.reason}{where}"
