"""The keys and values of the shared conversation prefix, computed once for a frozen LLM.

Every sample opens with the same system prompt and "USER:" tag; the collator strips it (`nextgpt.data.layout`) and
the model attaches these keys and values to each sample's own (`nextgpt.llm.varlen.attached_prefix`). Valid only
while no LLM weight that the prefix passes through trains (stages 1 and 2: projectors and the signal-token rows, which
the prefix does not contain); the prefix positions carry no loss, so loss and gradients equal the plain pass.

    layers = prefix_kv.key_values(llm, embed_tokens, layout.prefix_ids, device)   # per layer (1, H_kv, P, D) pairs
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from torch import nn
from transformers import DynamicCache

logger = logging.getLogger(__name__)


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
