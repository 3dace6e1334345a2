"""Shared-prefix reuse for a frozen LLM: every sample opens with the same system prompt and "USER:" tag, so its keys
and values are computed once and each sample runs only the tokens after it.

Valid only while no LLM weight that the prefix passes through trains (stages 1 and 2: projectors and the signal-token
rows, which the prefix does not contain); the prefix positions carry no loss, so loss and gradients equal the plain
pass. The template's prefix ids bound the shared part; `shared_prefix_length` shortens it to what every sample of the
batch really starts with and to positions whose next-token labels are unsupervised.

    num_prefix = shared_prefix_length(template_ids, input_ids, attention_mask, labels, position_ids)
    rest = strip_prefix(TokenRows(input_ids, attention_mask, labels, position_ids), num_prefix)
    cache = prefix_kv.expanded(llm, embed_tokens, template_ids[:num_prefix], batch_size=2, device=input_ids.device)
    llm(inputs_embeds=..., past_key_values=cache, position_ids=num_prefix + ..., attention_mask=...)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache

from nextgpt.constants import IGNORE_INDEX

logger = logging.getLogger(__name__)


@dataclass
class TokenRows:
    """Collated token tensors (the `NextGPTBatch` fields that splicing reads).

    Attributes:
        input_ids: (B, L) ids with media sentinels.
        attention_mask: (B, L) 1 on real tokens.
        labels: (B, L) targets or None.
        position_ids: (B, L) token-space positions restarting at 0 per packed sample, or None (one sample per row).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None
    position_ids: torch.Tensor | None


def _sample_positions(attention_mask: torch.Tensor, position_ids: torch.Tensor | None) -> torch.Tensor:
    """(B, L) position of every real token within its sample (left padding allowed when rows are not packed)."""
    if position_ids is not None:
        return position_ids
    return attention_mask.long().cumsum(dim=1) - 1


def shared_prefix_length(
    template_ids: Sequence[int],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor | None,
    position_ids: torch.Tensor | None,
) -> int:
    """How many leading `template_ids` every sample of the batch starts with and can skip.

    A sample may skip its first P tokens when they equal `template_ids[:P]`, when none of the labels at positions
    1..P is supervised (the logits of skipped positions are never computed; position t predicts label t + 1) and when
    at least one token remains.

    Args:
        template_ids: the template's fixed opening (BOS, system prompt, user role), e.g. `system_prefix_ids`.
        input_ids: (B, L) collated ids.
        attention_mask: (B, L) 1 on real tokens.
        labels: (B, L) targets or None.
        position_ids: (B, L) packed-sample positions or None.

    Returns:
        P, at most `len(template_ids)`; 0 when some sample does not start with the template.
    """
    # One transfer instead of a device sync per sample: the checks below read a handful of values per sample.
    input_ids, attention_mask = input_ids.cpu(), attention_mask.cpu()
    labels = None if labels is None else labels.cpu()
    positions = _sample_positions(attention_mask, None if position_ids is None else position_ids.cpu())
    valid = attention_mask.bool()
    template = torch.tensor(list(template_ids), dtype=input_ids.dtype)
    columns = torch.arange(input_ids.shape[1])
    row_ends = torch.where(valid, columns + 1, 0).max(dim=1).values.tolist()  # (B,) one past the last real token
    sample_starts = (valid & (positions == 0)).nonzero().tolist()  # row-major, so a row's samples come in order
    limit = len(template_ids)
    for index, (row, start) in enumerate(sample_starts):
        following = sample_starts[index + 1] if index + 1 < len(sample_starts) else None
        end = following[1] if following is not None and following[0] == row else row_ends[row]
        window = input_ids[row, start : min(end, start + limit)]
        mismatch = (window != template[: window.numel()]).nonzero()
        limit = min(limit, int(mismatch[0]) if mismatch.numel() else window.numel(), end - start - 1)
        if labels is not None:
            supervised = (labels[row, start + 1 : end] != IGNORE_INDEX).nonzero()
            if supervised.numel():
                limit = min(limit, int(supervised[0]))  # label at start + 1 + i needs the logit at start + i
    return max(limit, 0)


def strip_prefix(rows: TokenRows, num_prefix: int) -> TokenRows:
    """Drop the first `num_prefix` tokens of every sample and re-pack each row to the left.

    Args:
        rows: the collated tensors.
        num_prefix: tokens to drop per sample (from `shared_prefix_length`).

    Returns:
        The remaining tokens, right-padded (id 0, label IGNORE_INDEX, mask 0); packed positions restart at 0 at the
        first remaining token of each sample.
    """
    valid = rows.attention_mask.bool()
    positions = _sample_positions(rows.attention_mask, rows.position_ids)
    keep = valid & (positions >= num_prefix)  # (B, L)
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices  # kept tokens first, in order
    counts = keep.sum(dim=1)  # (B,)
    new_len = int(counts.max()) if counts.numel() else 0
    order = order[:, :new_len]  # (B, L) -> (B, L_rest)
    new_valid = torch.arange(new_len, device=keep.device) < counts.unsqueeze(1)  # (B, L_rest)
    input_ids = rows.input_ids.gather(1, order).masked_fill(~new_valid, 0)
    labels = None if rows.labels is None else rows.labels.gather(1, order).masked_fill(~new_valid, IGNORE_INDEX)
    position_ids = None
    if rows.position_ids is not None:
        position_ids = (rows.position_ids.gather(1, order) - num_prefix).masked_fill(~new_valid, 0)
    return TokenRows(input_ids, new_valid.to(rows.attention_mask.dtype), labels, position_ids)


class PrefixKVCache:
    """The keys and values of one shared prefix, computed once without gradients and reused by every batch.

    The entry is keyed by the prefix ids, device and dtype and recomputed when any of them changes. The prefix runs
    with the LLM in eval mode: a frozen module's dropout would only freeze one random draw into the cache.

    Attributes:
        num_computed: how many times a prefix was run through the LLM (for tests and logs).
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.num_computed = 0

    def key_values(
        self,
        llm: nn.Module,
        embed_tokens: Callable[[torch.Tensor], torch.Tensor],
        prefix_ids: Sequence[int],
        device: torch.device | str,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (keys, values) of shape (1, H_kv, P, D_head), computed on the first call for these ids."""
        dtype = next(llm.get_input_embeddings().parameters()).dtype
        key = (tuple(prefix_ids), torch.device(device), dtype)
        if key != self._key:
            cache = DynamicCache(config=llm.config)
            was_training = llm.training
            llm.eval()
            try:
                # Eager even with compiled layers: filling a cache reads each layer's slot, which would recompile.
                with torch.no_grad(), torch.compiler.set_stance("force_eager"):
                    embeds = embed_tokens(torch.tensor([list(prefix_ids)], device=device))  # (1, P) -> (1, P, D)
                    llm(inputs_embeds=embeds, past_key_values=cache, use_cache=True)
            finally:
                llm.train(was_training)
            self._layers = [(layer.keys, layer.values) for layer in cache.layers]
            self._key = key
            self.num_computed += 1
            logger.info("cached the keys and values of the %d-token shared prefix", len(prefix_ids))
        return self._layers

    def expanded(
        self,
        llm: nn.Module,
        embed_tokens: Callable[[torch.Tensor], torch.Tensor],
        prefix_ids: Sequence[int],
        batch_size: int,
        device: torch.device | str,
    ) -> DynamicCache:
        """A fresh cache holding the prefix for every row: (1, H, P, D) views expanded to (B, H, P, D), no copy.

        The LLM appends the rows' keys and values to it (out of place), so the stored prefix is never modified.
        """
        cache = DynamicCache(config=llm.config)
        for layer_idx, (keys, values) in enumerate(self.key_values(llm, embed_tokens, prefix_ids, device)):
            cache.update(keys.expand(batch_size, -1, -1, -1), values.expand(batch_size, -1, -1, -1), layer_idx)
        return cache
