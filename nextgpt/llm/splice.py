"""Splice projected media tokens into a batch of token ids at their placeholder sentinels (spec §1.4).

A placeholder `<image>`/`<video>`/`<audio>` is tokenised to a negative sentinel id (`SENTINEL_IDS`); each
sentinel becomes the k rows of the next media item of its modality, text ids become `embed_tokens` rows.

    spliced = splice_media(input_ids, attention_mask, labels, llm.get_input_embeddings(),
                           {Modality.IMAGE: image_tokens})  # image_tokens: (N_img, 8, D)
    out = llm(inputs_embeds=spliced.inputs_embeds, attention_mask=spliced.attention_mask, labels=spliced.labels)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from nextgpt.constants import IGNORE_INDEX, MODALITIES, SENTINEL_IDS, Modality
from nextgpt.utils.devices import copy_to_device

logger = logging.getLogger(__name__)

SPLICE_PAD_ID = -1
"""Value of `SplicedInputs.token_ids` on padding rows: negative, so it is neither a vocabulary id nor a sentinel."""


@dataclass
class SplicedInputs:
    """A batch after splicing, right-padded to its longest row.

    Attributes:
        inputs_embeds: (B, L', D) text embeddings and media rows; zeros on padding.
        attention_mask: (B, L') 1 on real rows, 0 on padding (dtype of the input mask).
        labels: (B, L') text labels, `IGNORE_INDEX` on media rows and padding; None when no labels were given.
        token_ids: (B, L') the original ids on text rows, `SENTINEL_IDS[m]` on every row of a modality-m item,
            `SPLICE_PAD_ID` on padding; lets later code find signal-token positions in the spliced sequence.
        host_token_ids: `token_ids` on the CPU when the splice worked out the rows there for outputs on another
            device (find signal spans from these: no wait for the GPU); None otherwise.
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None
    token_ids: torch.Tensor
    host_token_ids: torch.Tensor | None = None

    @property
    def readable_token_ids(self) -> torch.Tensor:
        """`token_ids` where reading them does not wait for the GPU: `host_token_ids` when there are any."""
        return self.token_ids if self.host_token_ids is None else self.host_token_ids


def _check_shapes(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor | None,
    media_tokens: Mapping[Modality, torch.Tensor],
) -> None:
    if input_ids.ndim != 2:
        raise ValueError(f"splice_media expects input_ids of shape (B, L), got {tuple(input_ids.shape)}")
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"splice_media expects attention_mask shaped like input_ids {tuple(input_ids.shape)}, "
            f"got {tuple(attention_mask.shape)}"
        )
    if labels is not None and labels.shape != input_ids.shape:
        raise ValueError(
            f"splice_media expects labels shaped like input_ids {tuple(input_ids.shape)}, got {tuple(labels.shape)}"
        )
    for modality, tokens in media_tokens.items():
        if not isinstance(modality, Modality):
            raise ValueError(f"media_tokens keys must be Modality members, got {modality!r}; use Modality.IMAGE etc.")
        if tokens.ndim != 3:
            raise ValueError(
                f"{modality.value} media tokens must be (N, k, D) (items, tokens per item, LLM width), "
                f"got {tuple(tokens.shape)}"
            )


def _find_media(
    input_ids: torch.Tensor, valid: torch.Tensor, media_tokens: Mapping[Modality, torch.Tensor]
) -> dict[Modality, torch.Tensor]:
    """Sentinel masks per modality present in the batch, after checking item counts and stray negative ids."""
    sentinel_masks: dict[Modality, torch.Tensor] = {}
    for modality in MODALITIES:
        mask = valid & (input_ids == SENTINEL_IDS[modality])
        num_sentinels = int(mask.sum())
        num_items = media_tokens[modality].shape[0] if modality in media_tokens else 0
        if num_sentinels != num_items:
            raise ValueError(
                f"{modality.value}: the batch has {num_sentinels} {modality.value} placeholder(s) but "
                f"{num_items} {modality.value} item(s) were given; pass one media item per placeholder"
            )
        if num_sentinels > 0:
            sentinel_masks[modality] = mask
    is_media = torch.zeros_like(valid)
    for mask in sentinel_masks.values():
        is_media |= mask
    stray = valid & ~is_media & (input_ids < 0)
    if stray.any():
        raise ValueError(
            f"input_ids hold negative id {int(input_ids[stray][0])} that is no media sentinel "
            f"(expected ids >= 0 or one of {sorted(SENTINEL_IDS.values())}); check the tokenisation"
        )
    return sentinel_masks


def splice_media(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor | None,
    embed_tokens: Callable[[torch.Tensor], torch.Tensor],
    media_tokens: Mapping[Modality, torch.Tensor],
    max_length: int | None = None,
    device: torch.device | str | None = None,
) -> SplicedInputs:
    """Replace every media sentinel by its item's token rows and embed the text ids.

    Items of one modality are consumed in order of appearance (batch row-major, left to right). Only rows
    with `attention_mask == 1` are kept, so left or right padding both work; the output is right-padded.

    Where each row goes is worked out where the ids are. Ids on the CPU with outputs on CUDA (`device`) keep that
    work on the host: it reads positions (`nonzero`, the longest row), which on the GPU would wait for everything
    queued before; only the embedding and the scatter run on the device, and the index tensors follow through
    page-locked memory, so the host never waits for the GPU here.

    Args:
        input_ids: (B, L) token ids with `SENTINEL_IDS[m]` where modality-m items go.
        attention_mask: (B, L) 1 on real tokens, 0 on padding.
        labels: (B, L) LM targets or None.
        embed_tokens: maps (1, T) vocabulary ids to (1, T, D) embeddings (the LLM's input embedding, on `device`);
            it is only ever called on ids >= 0.
        media_tokens: per modality, (N_m, k_m, D) projected items on `device`; modalities without items may be absent.
        max_length: cut spliced rows longer than this (with a warning); None keeps everything.
        device: where the outputs live; None: where `input_ids` are.

    Returns:
        The spliced batch (see `SplicedInputs`); gradients flow into `media_tokens` and the text embeddings.

    Raises:
        ValueError: on mismatched shapes, a modality whose placeholder count differs from its item count,
            a negative id that is no sentinel, or media rows whose width differs from the text embeddings.
    """
    _check_shapes(input_ids, attention_mask, labels, media_tokens)
    device = input_ids.device if device is None else torch.device(device)
    valid = attention_mask.bool()
    sentinel_masks = _find_media(input_ids, valid, media_tokens)

    # 1. Row widths in the spliced sequence: 1 per text token, k_m per media item, 0 on padding.
    text_mask = valid.clone()
    widths = valid.long()
    for modality, mask in sentinel_masks.items():
        text_mask &= ~mask
        widths = widths.masked_fill(mask, media_tokens[modality].shape[1])
    starts = widths.cumsum(dim=1) - widths  # (B, L) first output column of every input position
    new_lengths = widths.sum(dim=1)  # (B,)
    batch_size, out_len = input_ids.shape[0], int(new_lengths.max()) if input_ids.numel() else 0

    # 2. Output coordinates of every text row and media row (where the ids are).
    text_ids = input_ids[text_mask]  # (T,) row-major
    text_rows, text_pos = text_mask.nonzero(as_tuple=True)
    text_cols = starts[text_rows, text_pos]
    rows, cols = [text_rows], [text_cols]
    token_ids = input_ids.new_full((batch_size, out_len), SPLICE_PAD_ID)
    token_ids[text_rows, text_cols] = text_ids
    for modality, mask in sentinel_masks.items():
        width = media_tokens[modality].shape[1]
        item_rows, item_pos = mask.nonzero(as_tuple=True)  # (N_m,) row-major = order of appearance
        offsets = torch.arange(width, device=input_ids.device)
        media_cols = (starts[item_rows, item_pos].unsqueeze(1) + offsets).reshape(-1)  # (N_m, k) -> (N_m * k,)
        media_rows = item_rows.repeat_interleave(width)  # (N_m,) -> (N_m * k,)
        rows.append(media_rows)
        cols.append(media_cols)
        token_ids[media_rows, media_cols] = SENTINEL_IDS[modality]
    out_mask = (torch.arange(out_len, device=input_ids.device) < new_lengths.unsqueeze(1)).to(attention_mask.dtype)
    out_labels = None
    if labels is not None:
        out_labels = labels.new_full((batch_size, out_len), IGNORE_INDEX)
        out_labels[text_rows, text_cols] = labels[text_mask]

    # 3. Embed the text ids (never a sentinel or a padding id) and scatter all rows at once on the device;
    #    out-of-place index_put keeps the graph into media_tokens.
    text_embeds = embed_tokens(copy_to_device(text_ids, device).unsqueeze(0))[0]  # (1, T) -> (T, D)
    embed_dim = text_embeds.shape[-1]
    values = [text_embeds]
    for modality in sentinel_masks:
        items = media_tokens[modality]
        if items.shape[-1] != embed_dim:
            raise ValueError(
                f"{modality.value} media tokens have width {items.shape[-1]} but the LLM embeddings have {embed_dim}; "
                "build the input projector with llm_dim equal to the LLM hidden size"
            )
        values.append(items.to(text_embeds.dtype).reshape(-1, embed_dim))  # (N_m, k, D) -> (N_m * k, D)
    coords = copy_to_device(torch.stack([torch.cat(rows), torch.cat(cols)]), device)  # (2, N)
    inputs_embeds = text_embeds.new_zeros(batch_size, out_len, embed_dim).index_put(
        (coords[0], coords[1]), torch.cat(values)
    )
    spliced = SplicedInputs(
        inputs_embeds,
        copy_to_device(out_mask, device),
        None if out_labels is None else copy_to_device(out_labels, device),
        copy_to_device(token_ids, device),
        host_token_ids=None if token_ids.device == device else token_ids,
    )
    return _truncate(spliced, max_length)


def _truncate(spliced: SplicedInputs, max_length: int | None) -> SplicedInputs:
    """Cut rows longer than `max_length`, warning because a cut can split a media item or a signal span."""
    out_len = spliced.token_ids.shape[1]
    if max_length is None or out_len <= max_length:
        return spliced
    lengths = spliced.readable_token_ids != SPLICE_PAD_ID
    num_cut = int((lengths.sum(dim=1) > max_length).sum())
    logger.warning(
        "%d sequence(s) are longer than max_length=%d after splicing media (longest %d); cutting them, which may "
        "split a media item or signal span; raise model.llm.max_length or shorten the samples",
        num_cut,
        max_length,
        out_len,
    )
    return SplicedInputs(
        inputs_embeds=spliced.inputs_embeds[:, :max_length],
        attention_mask=spliced.attention_mask[:, :max_length],
        labels=None if spliced.labels is None else spliced.labels[:, :max_length],
        token_ids=spliced.token_ids[:, :max_length],
        host_token_ids=None if spliced.host_token_ids is None else spliced.host_token_ids[:, :max_length],
    )
