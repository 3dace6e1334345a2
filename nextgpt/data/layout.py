"""The batch layout: where every sample sits in the LLM's input, computed once on the host by the collator.

The LLM always reads one flattened row of `T = B x L'` columns (the spliced batch, row after row) and attends each
sample to itself only, from cumulative sample boundaries (`nextgpt.llm.varlen`). Padded rows, packed rows and rows
whose shared prefix is served from a cache are all this one layout: a padding run is a segment of its own, and a
stripped prefix is a count every sample's keys are extended by. Computing it in the data loader's workers (CPU
tensors, Python ints) keeps the training step free of the host-device waits that reading lengths from GPU tensors
would cost.

    layout = build_layout(input_ids, attention_mask, position_ids, tokens_per_media=1, prefix_ids=())
    layout.cu_seqlens_q      # (n + 1,) int32 sample starts in the flattened row, then T
    layout.position_ids      # (1, T) position of every column within its sample, after the prefix

Shared-prefix reuse (`train.prefix_reuse`): every conversation opens with the template's system prompt and user tag;
with a frozen LLM its keys and values never change, so the collator strips it from each sample
(`shared_prefix_length`, `strip_prefix`) and the model serves it from a cache. The batch then holds only what follows
the prefix, and so do the model's logits and spans.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from nextgpt.constants import IGNORE_INDEX, SENTINEL_IDS


@dataclass(frozen=True)
class BatchLayout:
    """How a collated batch maps onto the LLM's one flattened row.

    Attributes:
        rows: B, the batch's rows.
        width: L', the spliced width of every row (the longest row after splicing media).
        position_ids: (1, B x L') each column's position within its sample, counting the stripped prefix
            (a sample's first kept column is at `len(prefix_ids)`); padding runs count from 0.
        cu_seqlens_q: (n + 1,) int32 query boundaries: 0, the start of every later segment (sample or padding run), T.
        cu_seqlens_k: (n + 1,) int32 key boundaries: each segment's keys are the prefix's followed by its own.
        max_seqlen_q: the longest segment (queries).
        max_seqlen_k: the longest segment's keys (`max_seqlen_q + len(prefix_ids)`).
        prefix_ids: ids of the shared prefix stripped from every sample (empty: none).
        prefix_index: (T + n x P,) long, where each gathered key comes from in `cat([prefix keys, row keys])`; None
            without a prefix.
    """

    rows: int
    width: int
    position_ids: torch.Tensor
    cu_seqlens_q: torch.Tensor
    cu_seqlens_k: torch.Tensor
    max_seqlen_q: int
    max_seqlen_k: int
    prefix_ids: tuple[int, ...] = ()
    prefix_index: torch.Tensor | None = None

    @property
    def num_prefix(self) -> int:
        """P, the tokens of the shared prefix served from its cache."""
        return len(self.prefix_ids)

    def apply(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> BatchLayout:
        """The layout with `fn` applied to each tensor (a move or a pin; the ints stay on the host)."""
        index = self.prefix_index
        return replace(
            self,
            position_ids=fn(self.position_ids),
            cu_seqlens_q=fn(self.cu_seqlens_q),
            cu_seqlens_k=fn(self.cu_seqlens_k),
            prefix_index=None if index is None else fn(index),
        )

    def to(self, device: torch.device | str) -> BatchLayout:
        """The layout with its tensors on `device`."""
        return self.apply(lambda t: t.to(device))


def spliced_positions(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor | None,
    tokens_per_media: int,
) -> torch.Tensor:
    """Each spliced column's position within its sample (media rows count; padding runs count from 0).

    Args:
        input_ids: (B, L) collated ids with media sentinels (each becomes `tokens_per_media` columns).
        attention_mask: (B, L) 1 on real tokens (right padding).
        position_ids: (B, L) token-space positions restarting at 0 at each packed sample, or None (one sample a row).
        tokens_per_media: LLM rows per media item (the input projector's `num_tokens`).

    Returns:
        (B, L') positions, L' the longest spliced row.
    """
    valid = attention_mask.bool()
    if position_ids is None:
        starts = valid & (valid.long().cumsum(dim=1) == 1)  # the first real token of each row
    else:
        starts = valid & (position_ids == 0)
    is_media = valid & torch.isin(input_ids, torch.tensor(list(SENTINEL_IDS.values()), dtype=input_ids.dtype))
    widths = valid.long().masked_fill(is_media, tokens_per_media)  # (B, L) spliced columns of every token
    segments = starts.long().cumsum(dim=1) - 1  # (B, L) sample index of each token within its row
    row_lengths = widths.sum(dim=1)  # (B,)
    batch_size = input_ids.shape[0]
    width = int(row_lengths.max()) if input_ids.numel() else 0
    segment_ids = torch.full((batch_size, width), -1, dtype=torch.long)
    rows = torch.arange(batch_size).repeat_interleave(row_lengths)
    cols = torch.arange(rows.numel()) - (row_lengths.cumsum(0) - row_lengths)[rows]
    segment_ids[rows, cols] = segments.reshape(-1).repeat_interleave(widths.reshape(-1))
    # Position = column minus the column where its run of equal segment ids starts (padding is one more run).
    columns = torch.arange(width).expand(batch_size, width)
    run_start = torch.ones_like(segment_ids, dtype=torch.bool)
    run_start[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    start_col = torch.where(run_start, columns, 0).cummax(dim=1).values  # (B, L')
    return columns - start_col


def prefix_gather_index(cu: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """Where each key of the prefixed segments comes from in `cat([prefix keys, row keys])`.

    Segment i's keys are the P prefix keys followed by its own n_i keys, so the gathered key row holds T + n x P keys.

    Args:
        cu: (n + 1,) segment boundaries of the row.
        num_prefix: P.

    Returns:
        (T + n x P,) long indices into the P + T concatenated keys.
    """
    lengths = (cu[1:] - cu[:-1]).long() + num_prefix  # (n,) keys per segment
    starts = torch.cumsum(lengths, 0) - lengths  # (n,) first gathered key of each segment
    segment = torch.repeat_interleave(torch.arange(len(lengths), device=cu.device), lengths)
    offset = torch.arange(int(lengths.sum()), device=cu.device) - starts[segment]  # position among its keys
    return torch.where(offset < num_prefix, offset, cu.long()[segment] + offset)


def layout_from_positions(
    positions: torch.Tensor, prefix_ids: Sequence[int] = (), rows: int = 1, width: int | None = None
) -> BatchLayout:
    """The layout of a row whose per-sample positions are known: every position 0 opens a segment.

    Args:
        positions: (B, L') or (1, T) positions within each sample, from 0 (before the prefix offset).
        prefix_ids: the stripped shared prefix, if any.
        rows: B, when `positions` is already flattened.
        width: L', when `positions` is already flattened.
    """
    flat = positions.reshape(-1)
    starts = (flat == 0).nonzero().flatten()
    if starts.numel() == 0 or int(starts[0]) != 0:
        starts = torch.cat([starts.new_zeros(1), starts])
    cu = torch.cat([starts, starts.new_tensor([flat.numel()])]).to(torch.int32)  # (n + 1,)
    longest = int((cu[1:] - cu[:-1]).max()) if flat.numel() else 0
    num_prefix = len(prefix_ids)
    steps = torch.arange(len(cu), dtype=torch.int32, device=cu.device) * num_prefix
    return BatchLayout(
        rows=positions.shape[0] if positions.ndim == 2 and width is None else rows,
        width=positions.shape[-1] if width is None else width,
        position_ids=(flat + num_prefix).reshape(1, -1),
        cu_seqlens_q=cu,
        cu_seqlens_k=cu + steps,  # each segment's keys grow by P
        max_seqlen_q=longest,
        max_seqlen_k=longest + num_prefix,
        prefix_ids=tuple(int(i) for i in prefix_ids),
        prefix_index=prefix_gather_index(cu, num_prefix) if num_prefix else None,
    )


def build_layout(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor | None,
    tokens_per_media: int,
    prefix_ids: Sequence[int] = (),
) -> BatchLayout:
    """The layout of a collated batch (see `BatchLayout`); computed on the tensors' device, meant for the host.

    Args:
        input_ids: (B, L) collated ids (after any prefix was stripped).
        attention_mask: (B, L) 1 on real tokens.
        position_ids: (B, L) packed-sample positions or None.
        tokens_per_media: LLM rows per media item.
        prefix_ids: the shared prefix stripped from every sample.
    """
    positions = spliced_positions(input_ids.cpu(), attention_mask.cpu(), _cpu(position_ids), tokens_per_media)
    return layout_from_positions(positions, prefix_ids)


def _cpu(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.cpu()


def shared_prefix_length(prefix_ids: Sequence[int], items: Sequence[dict[str, Any]]) -> int:
    """How many leading `prefix_ids` every item starts with and may skip.

    An item may skip its first P tokens when they equal `prefix_ids[:P]`, when none of its labels at positions
    1..P is supervised (position t predicts label t + 1, and a skipped position has no logit) and when at least one
    token remains.

    Args:
        prefix_ids: the template's fixed opening (BOS, system prompt, user role), e.g. `system_prefix_ids`.
        items: dataset items with `input_ids` and `labels` (1-D tensors).

    Returns:
        P, at most `len(prefix_ids)`; 0 when some item does not start with the prefix (or there are no items).
    """
    if not items:
        return 0
    limit = len(prefix_ids)
    template = torch.tensor(list(prefix_ids), dtype=torch.long)
    for item in items:
        ids, labels = item["input_ids"], item["labels"]
        window = ids[:limit]
        mismatch = (window != template[: window.numel()]).nonzero()
        limit = min(limit, int(mismatch[0]) if mismatch.numel() else window.numel(), len(ids) - 1)
        supervised = (labels[1:] != IGNORE_INDEX).nonzero()
        if supervised.numel():
            limit = min(limit, int(supervised[0]))  # the label at 1 + i needs the logit at i
    return max(limit, 0)


def strip_prefix(item: dict[str, Any], num_prefix: int) -> dict[str, Any]:
    """The item without its first `num_prefix` tokens (signal span starts shift with them).

    The prefix holds no media placeholder and no signal span (`shared_prefix_length` stops before any supervised
    label, and every prefix id is a vocabulary id), so media, caption embeddings and targets stay as they are.
    """
    if not num_prefix:
        return item
    stripped = dict(item)
    stripped["input_ids"] = item["input_ids"][num_prefix:]
    stripped["labels"] = item["labels"][num_prefix:]
    stripped["length"] = len(stripped["input_ids"])
    stripped["signal_span_starts"] = {m: [s - num_prefix for s in v] for m, v in item["signal_span_starts"].items()}
    return stripped
