"""Per-sample attention over a batch's flattened row: the one attention route of training.

A row of n samples through masked sdpa needs a block-diagonal mask, and the masked kernels compute every block of the
row's L x L scores, blocked ones included: n times the attention work of the samples alone. Here the LLM attends each
sample to itself only, from cumulative sample boundaries (`cu_seq_lens_q`, the names transformers gives the flash
kwargs): on CUDA through PyTorch's flash `varlen_attn`; elsewhere through one causal sdpa call per sample (the
reference the CUDA kernel is checked against). With a shared prefix served from its cache (`train.prefix_reuse`),
each sample's keys are the prefix's followed by its own, and its queries see all of the prefix. Calls without
boundaries (inference: prompt prefill, decoding, the prefix cache itself) are plain sdpa with the mask transformers
builds for sdpa.

    register_varlen_attention()
    llm = AutoModelForCausalLM.from_pretrained(path, attn_implementation=VARLEN_ATTENTION)
    llm(inputs_embeds=x, **varlen_kwargs(batch.layout))   # x: (1, T, D), the batch's rows flattened
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nextgpt.data.layout import BatchLayout

try:
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # a PyTorch without the varlen kernel: the per-sample reference runs everywhere
    varlen_attn = None

VARLEN_ATTENTION = "nextgpt_varlen"
"""The name the attention function is registered under in transformers."""

_CAUSAL: dict[str, Any] = (
    {"is_causal": True}
    if varlen_attn is not None and "is_causal" in inspect.signature(varlen_attn).parameters
    else {"window_size": (-1, 0)}
)
"""How this PyTorch's `varlen_attn` is told to be causal from the bottom right (its argument changed across versions),
resolved once rather than on every attention call."""


def boundaries_mask(device: torch.device) -> torch.Tensor:
    """The `attention_mask` of a call with sample boundaries: an empty 4-D tensor, which transformers hands to the
    attention as it is (4-D masks are taken as prepared) and `varlen_attention_forward` ignores.

    With no mask, transformers derives one from the position ids: it finds where the packed samples start and builds a
    (T, T) block mask that the boundaries make unnecessary, and first reads on the host whether the row is packed at
    all. That read waits for the GPU in every training forward, so the host cannot queue a step's layers while the GPU
    still runs the previous step's backward.
    """
    return torch.empty((1, 1, 0, 0), dtype=torch.bool, device=device)


def varlen_kwargs(layout: BatchLayout) -> dict[str, Any]:
    """What the LLM call passes down to `varlen_attention_forward` for a batch's flattened row (and the mask
    placeholder that keeps transformers from building a mask, `boundaries_mask`).

    The same keys with or without a prefix: compiled layers guard on them, and a key missing from one call would
    make torch.compile's recompilation check fail on the other.

    Args:
        layout: the batch's layout (`nextgpt.data.layout`), its tensors on the LLM's device.
    """
    return {
        "attention_mask": boundaries_mask(layout.position_ids.device),
        "position_ids": layout.position_ids,
        "cu_seq_lens_q": layout.cu_seqlens_q,
        "cu_seq_lens_k": layout.cu_seqlens_k,
        "max_length_q": layout.max_seqlen_q,
        "max_length_k": layout.max_seqlen_k,
        "prefix_index": layout.prefix_index,
    }


def _repeat_heads(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, H_kv, T, D) -> (B, H_kv * groups, T, D) for grouped-query attention."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def _reference(query, key, value, cu_q: torch.Tensor, cu_k: torch.Tensor, scaling: float | None) -> torch.Tensor:
    """One sdpa call per sample, causal from the bottom right (a sample's extra leading keys, a shared prefix, are
    seen by all its queries): query (1, H, T, D), keys (1, H, T_k, D) -> (1, T, H, D)."""
    outs = []
    for (qs, qe), (ks, ke) in zip(pairwise(cu_q.tolist()), pairwise(cu_k.tolist()), strict=True):
        n, m = qe - qs, ke - ks
        allowed = torch.ones(n, m, dtype=torch.bool, device=query.device).tril(diagonal=m - n)  # (n, m)
        outs.append(
            F.scaled_dot_product_attention(
                query[:, :, qs:qe], key[:, :, ks:ke], value[:, :, ks:ke], attn_mask=allowed, scale=scaling
            )
        )
    return torch.cat(outs, dim=2).transpose(1, 2)


def _flash(query, key, value, cu_q, cu_k, max_q: int, max_k: int, scaling: float | None) -> torch.Tensor:
    """PyTorch's flash varlen kernel, causal from the bottom right: (1, H, T, D) -> (1, T, H, D)."""
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # (1, H, T, D) -> (T, H, D)
    out = varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, scale=scaling, **_CAUSAL)  # (T, H, D)
    return out.unsqueeze(0)


PREFIX_ATTRIBUTE = "nextgpt_prefix_kv"
"""Attention-module attribute holding the layer's shared-prefix (keys, values) during one forward (`attached_prefix`)."""


@contextmanager
def attached_prefix(layers: nn.ModuleList, prefix: list[tuple[torch.Tensor, torch.Tensor]] | None) -> Iterator[None]:
    """Give every attention module its own layer's prefix keys and values for the duration of one forward.

    Held on the module rather than passed down as one list: a compiled layer would pick its entry by `layer_idx` and
    compile again for every layer; as a tensor attribute of the module it is just another input of one shared graph.

    Args:
        layers: the LLM's decoder layers (`decoder_layers`), each with `self_attn`.
        prefix: per layer (keys, values) of shape (1, H_kv, P, D), or None (nothing attached).
    """
    if not prefix:
        yield
        return
    modules = [layer.self_attn for layer in layers]
    for module, key_values in zip(modules, prefix, strict=True):
        setattr(module, PREFIX_ATTRIBUTE, key_values)
    try:
        yield
    finally:
        for module in modules:
            delattr(module, PREFIX_ATTRIBUTE)


def _with_prefix(module: nn.Module, key: torch.Tensor, value: torch.Tensor, index: torch.Tensor):
    """Each sample's keys and values preceded by the shared prefix's: (1, H_kv, T, D) -> (1, H_kv, T + n x P, D)."""
    prefix_keys, prefix_values = getattr(module, PREFIX_ATTRIBUTE)  # (1, H_kv, P, D) each
    keys = torch.cat([prefix_keys.to(key.dtype), key], dim=2).index_select(2, index)
    values = torch.cat([prefix_values.to(value.dtype), value], dim=2).index_select(2, index)
    return keys, values


def flash_varlen_available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether PyTorch's flash varlen kernel can run here (CUDA, half precision, a PyTorch that has it)."""
    return varlen_attn is not None and device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)


def varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: per-sample causal attention when sample boundaries are given, else sdpa.

    Args:
        module: the attention layer (for `num_key_value_groups`).
        query: (1, H, T, D); key, value: (1, H_kv, T, D).
        attention_mask: ignored when `cu_seq_lens_q` is given (the boundaries say everything; `varlen_kwargs` passes
            the empty `boundaries_mask`).
        dropout: attention dropout (must be 0 with boundaries: training here never uses it).
        scaling: softmax scale.
        kwargs: `cu_seq_lens_q`, `cu_seq_lens_k`, ... from `varlen_kwargs`, or nothing.

    Returns:
        (1, T, H, D) attention output, no weights.
    """
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling)
    if query.shape[0] != 1 or dropout:
        raise ValueError("varlen attention takes one flattened row and no attention dropout")
    if kwargs.get("prefix_index") is not None:
        key, value = _with_prefix(module, key, value, kwargs["prefix_index"])
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = _repeat_heads(key, groups), _repeat_heads(value, groups)
    cu_k = kwargs["cu_seq_lens_k"]
    if flash_varlen_available(query.device, query.dtype):
        max_q, max_k = int(kwargs["max_length_q"]), int(kwargs["max_length_k"])
        return _flash(query, key, value, cu, cu_k, max_q, max_k, scaling), None
    return _reference(query, key, value, cu, cu_k, scaling), None


def register_varlen_attention() -> None:
    """Make `VARLEN_ATTENTION` a transformers attention implementation (masks as for sdpa); idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(VARLEN_ATTENTION, varlen_attention_forward)
    AttentionMaskInterface.register(VARLEN_ATTENTION, sdpa_mask)
