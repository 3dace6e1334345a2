"""Batched text decoding: several spliced prompts decoded together, left-padded, each with its own settings.

`FastDecoder` decodes one prompt; a server answering many users at once would run its whole LLM once per user per
token. `BatchDecoder` keeps a static KV cache of `max_batch_size` rows: the prompts of a batch are left-padded into
one (B, L, D) tensor and prefilled in one call, then every step decodes one token for every row through one step of
fixed shapes, compiled on CUDA and replayed as a CUDA graph (`CUDA_GRAPH_OPTIONS`): a 7B step
for 32 rows costs little more than for one, since both read every weight once. Rows share the cache's write
position; each row's own positions (`position_ids`) and its padding (the attention mask) make it see what it sees
alone. A row that ends (stop id, length limit, cancel) keeps its slot until the batch ends; its tokens are dropped.
Each row keeps its own sampling settings and RNG: a `torch.Generator` seeded with the request's seed draws what the
single-prompt path draws after `torch.manual_seed(seed)`, so a batched reply is the reply the request gets alone
(greedy or seeded, up to the float rounding of padded attention; tests/inference/test_batch_decode.py checks it).

    rows = [DecodeRow(embeds_a, max_new_tokens=64), DecodeRow(embeds_b, max_new_tokens=32, temperature=0.7, seed=3)]
    decoder = BatchDecoder(model.llm, max_batch_size=16, max_cache_len=1024)   # keep it: one compilation
    ids = decoder.decode(rows, eos_token_ids=[2])   # [(T_a,) ids, (T_b,) ids]; a cancelled row: the error
    ids = decode_batch(model.llm, rows, [2])        # the same with a throwaway eager decoder (tests, CPU)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import StaticCache

from nextgpt.decoders.cancel import GenerationCancelled
from nextgpt.inference.fast_decode import (
    CACHE_LEN_MULTIPLE,
    CUDA_GRAPH_OPTIONS,
    _causal_lm,
    build_logits_warpers,
    compiles_on,
    prepare_cuda_graph_thread,
    select_next_token,
)

logger = logging.getLogger(__name__)


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
        ignore_eos: decode `max_new_tokens` tokens; the batch's stop ids do not end this row.
    """

    inputs_embeds: torch.Tensor
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    streamer: Any | None = None
    cancel: threading.Event | None = None
    ignore_eos: bool = False


def _check_rows(rows: Sequence[DecodeRow], device: torch.device) -> None:
    for index, row in enumerate(rows):
        if row.inputs_embeds.ndim != 3 or row.inputs_embeds.shape[0] != 1:
            raise ValueError(f"row {index}: inputs_embeds must be (1, L, D), got {tuple(row.inputs_embeds.shape)}")
        if row.max_new_tokens < 1:
            raise ValueError(f"row {index}: max_new_tokens must be >= 1, got {row.max_new_tokens}")
        if row.inputs_embeds.device != device:
            raise ValueError(f"row {index}: inputs_embeds are on {row.inputs_embeds.device}, the LLM on {device}")


def tokens_needed(rows: Sequence[DecodeRow]) -> int:
    """Cache length a batch needs: its longest prompt (every row is padded to it) + its longest reply."""
    return max(r.inputs_embeds.shape[1] for r in rows) + max(r.max_new_tokens for r in rows)


class BatchDecoder:
    """Decodes up to `max_batch_size` prompts at once with a reusable static KV cache and a (compiled) step.

    Compiled, the cache and the step have `max_batch_size` rows and `max_cache_len` positions whatever the batch: a
    smaller batch fills the other rows with a one-token dummy prompt, so one compiled step (and its CUDA graph) serves
    every batch size. Eager (the CPU), nothing is compiled to keep: each batch gets a fresh cache of exactly its rows
    and its `tokens_needed`, since zeroing and attending over unused positions would cost more than the model (64 rows
    of the tiny model: 4x the whole decode at 600 positions). Keep one decoder per loaded model and batch size: a new
    one compiles again (about a minute for a 7B model).

    Args:
        llm: a transformers LLaMA-family causal LM (peft-wrapped or merged), in eval mode.
        max_batch_size: most prompts per batch.
        max_cache_len: longest prompt + reply of a batch when compiled (grown by `reserve`, which recompiles);
            eager, each batch's cache has the length it needs.
        compile: compile the step; None compiles on CUDA (CUDA graphs) and not on CPU.

    Raises:
        ValueError: max_batch_size or max_cache_len below 1.
    """

    def __init__(self, llm: nn.Module, max_batch_size: int, max_cache_len: int, compile: bool | None = None):
        if max_batch_size < 1 or max_cache_len < 1:
            raise ValueError(f"max_batch_size and max_cache_len must be >= 1, got {max_batch_size}, {max_cache_len}")
        self.llm = llm
        self.causal_lm = _causal_lm(llm)
        self.device = next(self.causal_lm.parameters()).device
        self.max_batch_size = max_batch_size
        self.compile = compiles_on(self.device, compile)
        self._allocate(max_cache_len)

    def _allocate(self, max_cache_len: int) -> None:
        self.max_cache_len = max_cache_len
        self.cache = StaticCache(config=self.causal_lm.config, max_cache_len=max_cache_len)
        self._cuda_graphs = self.compile and self.device.type == "cuda"
        self._step = self._decode_step
        if self.compile:
            options = CUDA_GRAPH_OPTIONS if self._cuda_graphs else None
            self._step = torch.compile(self._decode_step, options=options, fullgraph=True)

    def reserve(self, num_tokens: int) -> None:
        """Make room for batches of `num_tokens` (padded prompt + reply), growing the cache (then recompiling)."""
        if num_tokens <= self.max_cache_len or not self.compile:  # eager: every batch gets a cache of its own length
            return
        grown = -(-num_tokens // CACHE_LEN_MULTIPLE) * CACHE_LEN_MULTIPLE
        logger.warning("batched decoding: growing the static KV cache from %d to %d tokens", self.max_cache_len, grown)
        self._allocate(grown)

    def _decode_step(
        self, token_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1) tokens at (B, 1) positions, (B, C) padding mask -> greedy next tokens (B,) and (B, V) float32 logits."""
        out = self.causal_lm(
            input_ids=token_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=self.cache,
            use_cache=True,
        )
        scores = out.logits[:, -1].float()  # (B, V)
        return torch.argmax(scores, dim=-1), scores

    def _layout(self, rows: Sequence[DecodeRow], width: int, cache_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, D) prompts left-padded with zeros (B = `width` >= rows; dummy rows: one zero token) and the (B, C)
        padding mask, C = `cache_len`: 0 at a row's padding, 1 from its first token to the end of the cache (the
        causal mask hides what is not written yet)."""
        longest = max(r.inputs_embeds.shape[1] for r in rows)
        first = rows[0].inputs_embeds
        embeds = first.new_zeros((width, longest, first.shape[2]))  # (B, L, D)
        mask = torch.zeros((width, cache_len), dtype=torch.long, device=self.device)  # (B, C)
        mask[:, longest - 1 :] = 1  # dummy rows attend to their last (zero) position only
        for index, row in enumerate(rows):
            length = row.inputs_embeds.shape[1]
            embeds[index, longest - length :] = row.inputs_embeds[0]
            mask[index, longest - length :] = 1
        return embeds, mask

    def _prefill(self, embeds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Write the padded prompts into the (reset) cache: greedy tokens (B,), (B, V) logits, next positions (B, 1).

        Positions count real tokens only, so each row sees what it sees alone."""
        self.cache.reset()
        longest = embeds.shape[1]
        positions = (mask[:, :longest].cumsum(1) - 1).clamp(min=0)  # (B, L)
        out = self.causal_lm(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        scores = out.logits[:, -1].float()  # (B, V)
        return torch.argmax(scores, dim=-1), scores, positions[:, -1:] + 1

    @torch.no_grad()
    def decode(
        self, rows: Sequence[DecodeRow], eos_token_ids: Iterable[int] = ()
    ) -> list[torch.Tensor | GenerationCancelled]:
        """Decode every row's reply in one batch.

        Args:
            rows: the prompts and their settings, at most `max_batch_size`.
            eos_token_ids: ids that end a reply (kept as its last token, as `FastDecoder` does).

        Returns:
            Per row, in order: (T,) int64 new ids (T <= its max_new_tokens), or the `GenerationCancelled` that ended it.

        Raises:
            ValueError: a malformed row, or more rows than `max_batch_size`.
        """
        _check_rows(rows, self.device)
        if not rows:
            return []
        if len(rows) > self.max_batch_size:
            raise ValueError(f"{len(rows)} prompts exceed the decoder's max_batch_size of {self.max_batch_size}")
        self.reserve(tokens_needed(rows))
        if self._cuda_graphs:
            prepare_cuda_graph_thread()
        stops = set(eos_token_ids)
        results: list[torch.Tensor | GenerationCancelled | None] = [None] * len(rows)
        generated: list[list[int]] = [[] for _ in rows]
        warpers = [build_logits_warpers(r.temperature, r.top_p) if r.temperature > 0 else None for r in rows]
        generators = []
        for row in rows:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(row.seed)
            generators.append(generator)
            if row.streamer is not None:
                row.streamer.put(torch.zeros((1, 0), dtype=torch.long))  # the (empty) prompt, which streamers skip
        width, cache_len = self.max_batch_size, self.max_cache_len
        if not self.compile:  # nothing compiled to keep: a cache of this batch's rows (sized by the prefill) and length
            width, cache_len = len(rows), tokens_needed(rows)
            self.cache = StaticCache(config=self.causal_lm.config, max_cache_len=cache_len)
        embeds, mask = self._layout(rows, width, cache_len)  # (B, L, D), (B, C)
        greedy, scores, positions = self._prefill(embeds, mask)  # (B,), (B, V), (B, 1)
        active = set(range(len(rows)))
        while active:
            # Every greedy row's token from one device sync (a sync per row costs more than a 7B step).
            greedy_ids = greedy.tolist()  # (B,)
            tokens = [0] * width
            for index in sorted(active):
                row = rows[index]
                if row.cancel is not None and row.cancel.is_set():
                    results[index] = GenerationCancelled("generation stopped on request")
                    active.discard(index)
                    _end_stream(row)
                    continue
                if warpers[index] is None:
                    token = greedy_ids[index]  # what select_next_token picks from the row alone
                else:
                    history = torch.tensor([generated[index]], dtype=torch.long, device=self.device)  # (1, T)
                    token = int(
                        select_next_token(scores[index : index + 1], warpers[index], history, generators[index])
                    )
                generated[index].append(token)
                tokens[index] = token
                if row.streamer is not None:
                    row.streamer.put(torch.tensor([token]))
                if (token in stops and not row.ignore_eos) or len(generated[index]) == row.max_new_tokens:
                    results[index] = torch.tensor(generated[index], dtype=torch.long, device=self.device)
                    active.discard(index)
                    _end_stream(row)
            if not active:
                break
            token_ids = torch.tensor(tokens, device=self.device)[:, None]  # (B, 1)
            del greedy, scores  # consumed: a CUDA-graph replay may reuse their memory
            if self._cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
            greedy, scores = self._step(token_ids, positions, mask)  # (B,), (B, V)
            positions = positions + 1
        return results  # type: ignore[return-value]  # every row got its result above


def decode_batch(
    llm: nn.Module, rows: Sequence[DecodeRow], eos_token_ids: Iterable[int] = ()
) -> list[torch.Tensor | GenerationCancelled]:
    """`BatchDecoder.decode` with a decoder of exactly these rows, eager (nothing to compile for one call).

    Args:
        llm: a transformers LLaMA-family causal LM (peft-wrapped or merged), in eval mode.
        rows: the prompts and their settings.
        eos_token_ids: ids that end a reply.

    Returns:
        As `BatchDecoder.decode`.
    """
    if not rows:
        return []
    decoder = BatchDecoder(llm, max_batch_size=len(rows), max_cache_len=tokens_needed(rows), compile=False)
    return decoder.decode(rows, eos_token_ids)


def _end_stream(row: DecodeRow) -> None:
    if row.streamer is not None:
        row.streamer.end()
