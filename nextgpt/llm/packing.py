"""Per-sample positions and attention for rows that hold several samples (packing) or follow a cached prefix.

The collator marks packed samples with token-space `position_ids` that restart at 0 at every sample's first token.
Splicing changes lengths (a media placeholder becomes k rows), so the LLM's positions are rebuilt after splicing:
`splice_layout` gives every spliced column its sample index and its position within the sample (media rows count).
`build_block_causal_mask` turns the sample indices into a block-diagonal causal mask, optionally preceded by
columns for a shared prefix that every sample sees (its KV comes from `nextgpt.llm.prefix_cache`).

    layout = splice_layout(input_ids, attention_mask, position_ids, {Modality.IMAGE: 8})
    mask = build_block_causal_mask(layout.segment_ids, num_prefix=0, dtype=torch.float32)  # (B, 1, L', L')
    llm(inputs_embeds=embeds, attention_mask=mask, position_ids=layout.position_ids)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nextgpt.constants import SENTINEL_IDS, Modality

PAD_SEGMENT = -1
"""`SampleLayout.segment_ids` value on padding columns."""


@dataclass
class SampleLayout:
    """Where each spliced column belongs.

    Attributes:
        segment_ids: (B, L') index of the sample within its row (0, 1, ...), `PAD_SEGMENT` on padding.
        position_ids: (B, L') position within the sample, counting media rows; padding runs count on from 0.
    """

    segment_ids: torch.Tensor
    position_ids: torch.Tensor


def splice_layout(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor | None,
    media_widths: dict[Modality, int],
) -> SampleLayout:
    """Sample index and in-sample position of every column of the spliced batch (`splice_media`'s output).

    Args:
        input_ids: (B, L) collated ids with media sentinels; the same tensor given to `splice_media`.
        attention_mask: (B, L) 1 on real tokens.
        position_ids: (B, L) token-space positions restarting at 0 at each packed sample's first token, or None when
            every row holds one sample.
        media_widths: rows each media item of a modality becomes (`media_tokens[m].shape[1]`).

    Returns:
        A `SampleLayout` of the spliced width (the longest spliced row).
    """
    valid = attention_mask.bool()
    if position_ids is None:
        starts = valid & (valid.long().cumsum(dim=1) == 1)  # (B, L) the first real token of each row
    else:
        starts = valid & (position_ids == 0)
    # 1. Spliced width of every token: 1 per text token, k_m per media sentinel, 0 on padding.
    widths = valid.long()
    for modality, width in media_widths.items():
        widths = widths.masked_fill(valid & (input_ids == SENTINEL_IDS[modality]), width)
    segments = starts.long().cumsum(dim=1) - 1  # (B, L) sample index of each token
    # 2. Repeat each token's sample index over its spliced columns, row by row.
    row_lengths = widths.sum(dim=1)  # (B,)
    batch_size, out_len = input_ids.shape[0], int(row_lengths.max()) if input_ids.numel() else 0
    flat_segments = segments.reshape(-1).repeat_interleave(widths.reshape(-1))  # (sum of widths,)
    rows = torch.arange(batch_size, device=input_ids.device).repeat_interleave(row_lengths)
    cols = torch.arange(rows.numel(), device=input_ids.device) - (row_lengths.cumsum(0) - row_lengths)[rows]
    segment_ids = torch.full((batch_size, out_len), PAD_SEGMENT, dtype=torch.long, device=input_ids.device)
    segment_ids[rows, cols] = flat_segments
    # 3. Position within the sample: column minus the column where its run of equal segment ids starts.
    columns = torch.arange(out_len, device=input_ids.device).expand(batch_size, out_len)
    run_start = torch.ones_like(segment_ids, dtype=torch.bool)
    run_start[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    start_col = torch.where(run_start, columns, 0).cummax(dim=1).values  # (B, L')
    return SampleLayout(segment_ids=segment_ids, position_ids=columns - start_col)


def build_block_causal_mask(segment_ids: torch.Tensor, num_prefix: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive 4-D attention mask: causal within each sample, nothing across samples, every query sees the prefix.

    transformers (5.17 and 5.23) passes a 4-D mask to the sdpa and eager attention unchanged; a float mask with 0
    (attend) and the dtype's minimum (blocked) means the same to both. Padding columns attend to earlier padding
    only, so no row is fully masked (which would give NaN in sdpa).

    Args:
        segment_ids: (B, L) sample index per column, `PAD_SEGMENT` on padding (`SampleLayout.segment_ids`).
        num_prefix: columns of a cached shared prefix placed before the row (0 for none).
        dtype: the attention dtype (the LLM's input embedding dtype).

    Returns:
        (B, 1, L, num_prefix + L) mask.
    """
    batch_size, length = segment_ids.shape
    causal = torch.ones(length, length, dtype=torch.bool, device=segment_ids.device).tril()  # (L, L)
    allowed = (segment_ids.unsqueeze(2) == segment_ids.unsqueeze(1)) & causal  # (B, L, L)
    if num_prefix:
        sees_prefix = allowed.new_ones(batch_size, length, num_prefix)
        allowed = torch.cat([sees_prefix, allowed], dim=2)  # (B, L, P + L)
    blocked = torch.finfo(dtype).min
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device).masked_fill(~allowed, blocked)
    return mask.unsqueeze(1)  # (B, L, P + L) -> (B, 1, L, P + L)
