"""Batched text decoding: several spliced prompts decoded together, left-padded, each with its own settings.

`FastDecoder` decodes one prompt; a server answering many users at once would run its whole LLM once per user per
token. Here the prompts of a batch are left-padded into one (B, L, D) tensor, prefilled in one call and decoded one
token per row per step through a transformers `DynamicCache`; a row that ends (stop id, length limit, cancel) is cut
out of the batch and its cache, so the others stop paying for it. Each row keeps its own sampling settings and RNG:
a `torch.Generator` seeded with the request's seed draws what the single-prompt path draws after
`torch.manual_seed(seed)`, so a batched reply is the reply the request gets alone (greedy or seeded, up to the
float rounding of padded attention; tests/inference/test_batch_decode.py checks it).

    rows = [DecodeRow(embeds_a, max_new_tokens=64), DecodeRow(embeds_b, max_new_tokens=32, temperature=0.7, seed=3)]
    ids = decode_batch(model.llm, rows, eos_token_ids=[2])   # [(T_a,) ids, (T_b,) ids]; a cancelled row: the error
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache

from nextgpt.decoders.cancel import GenerationCancelled
from nextgpt.inference.fast_decode import _causal_lm, build_logits_warpers, select_next_token


@dataclass
class DecodeRow:
    """One prompt of a batch and how to continue it.

    Attributes:
        inputs_embeds: (1, L, D) spliced prompt in the LLM's dtype and device.
        max_new_tokens: length limit of the reply.
        temperature: 0 for greedy, > 0 samples (as `FastDecoder.generate`).
        top_p: nucleus mass when sampling.
        seed: seeds this row's sampling RNG.
        streamer: an HF streamer receiving this row's tokens as they are decoded.
        cancel: when set, the row leaves the batch and its result is `GenerationCancelled`.
    """

    inputs_embeds: torch.Tensor
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    streamer: Any | None = None
    cancel: threading.Event | None = None


def _left_pad(rows: Sequence[DecodeRow]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L_max, D) embeddings with zeros in front of shorter prompts, and the (B, L_max) attention mask."""
    longest = max(r.inputs_embeds.shape[1] for r in rows)
    first = rows[0].inputs_embeds
    embeds = first.new_zeros((len(rows), longest, first.shape[2]))  # (B, L_max, D)
    mask = torch.zeros((len(rows), longest), dtype=torch.long, device=first.device)  # (B, L_max)
    for index, row in enumerate(rows):
        length = row.inputs_embeds.shape[1]
        embeds[index, longest - length :] = row.inputs_embeds[0]
        mask[index, longest - length :] = 1
    return embeds, mask


def _check_rows(rows: Sequence[DecodeRow], device: torch.device) -> None:
    for index, row in enumerate(rows):
        if row.inputs_embeds.ndim != 3 or row.inputs_embeds.shape[0] != 1:
            raise ValueError(f"row {index}: inputs_embeds must be (1, L, D), got {tuple(row.inputs_embeds.shape)}")
        if row.max_new_tokens < 1:
            raise ValueError(f"row {index}: max_new_tokens must be >= 1, got {row.max_new_tokens}")
        if row.inputs_embeds.device != device:
            raise ValueError(f"row {index}: inputs_embeds are on {row.inputs_embeds.device}, the LLM on {device}")


@torch.no_grad()
def decode_batch(
    llm: nn.Module, rows: Sequence[DecodeRow], eos_token_ids: Iterable[int] = ()
) -> list[torch.Tensor | GenerationCancelled]:
    """Decode every row's reply in one batch.

    Args:
        llm: a transformers LLaMA-family causal LM (peft-wrapped or merged), in eval mode.
        rows: the prompts and their settings.
        eos_token_ids: ids that end a reply (kept as its last token, as `FastDecoder` does).

    Returns:
        Per row, in order: (T,) int64 new ids (T <= its max_new_tokens), or the `GenerationCancelled` that ended it.

    Raises:
        ValueError: a malformed row.
    """
    causal_lm = _causal_lm(llm)
    device = next(causal_lm.parameters()).device
    _check_rows(rows, device)
    if not rows:
        return []
    stops = set(eos_token_ids)
    results: list[torch.Tensor | GenerationCancelled | None] = [None] * len(rows)
    generated: list[list[int]] = [[] for _ in rows]
    warpers = [build_logits_warpers(r.temperature, r.top_p) if r.temperature > 0 else None for r in rows]
    generators = []
    for row in rows:
        generator = torch.Generator(device=device)
        generator.manual_seed(row.seed)
        generators.append(generator)
    for row in rows:
        if row.streamer is not None:
            row.streamer.put(torch.zeros((1, 0), dtype=torch.long))  # the (empty) prompt, which streamers skip
    # 1. Prefill the left-padded prompts; positions count real tokens only, so each row sees what it sees alone.
    embeds, mask = _left_pad(rows)  # (B, L), (B, L)
    positions = (mask.cumsum(1) - 1).clamp(min=0)  # (B, L)
    cache = DynamicCache(config=causal_lm.config)
    out = causal_lm(
        inputs_embeds=embeds,
        attention_mask=mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    scores = out.logits[:, -1].float()  # (B, V)
    active = list(range(len(rows)))  # row index of each batch position
    next_positions = positions[:, -1:] + 1  # (B, 1)
    # 2. One token per active row per step; finished rows leave the batch and the cache.
    while active:
        tokens, keep = [], []
        for position, index in enumerate(active):
            row = rows[index]
            if row.cancel is not None and row.cancel.is_set():
                results[index] = GenerationCancelled("generation stopped on request")
                _end_stream(row)
                continue
            row_scores = scores[position : position + 1]  # (1, V)
            if warpers[index] is None:
                token = int(select_next_token(row_scores))
            else:
                history = torch.tensor([generated[index]], dtype=torch.long, device=device)  # (1, T)
                token = int(select_next_token(row_scores, warpers[index], history, generators[index]))
            generated[index].append(token)
            if row.streamer is not None:
                row.streamer.put(torch.tensor([token]))
            if token in stops or len(generated[index]) == row.max_new_tokens:
                results[index] = torch.tensor(generated[index], dtype=torch.long, device=device)
                _end_stream(row)
                continue
            tokens.append(token)
            keep.append(position)
        if not keep:
            break
        if len(keep) < len(active):
            kept = torch.tensor(keep, device=device)
            cache.batch_select_indices(kept)
            mask, next_positions = mask[kept], next_positions[kept]
            active = [active[p] for p in keep]
        mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)  # (B', L + t)
        out = causal_lm(
            input_ids=torch.tensor(tokens, device=device)[:, None],  # (B', 1)
            attention_mask=mask,
            position_ids=next_positions,
            past_key_values=cache,
            use_cache=True,
        )
        scores = out.logits[:, -1].float()  # (B', V)
        next_positions = next_positions + 1
    return results  # type: ignore[return-value]  # every row got its result above


def _end_stream(row: DecodeRow) -> None:
    if row.streamer is not None:
        row.streamer.end()
