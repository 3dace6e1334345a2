"""Variable-length attention for packed rows (`model.llm.attn_implementation=varlen`).

A packed row of n samples through sdpa needs a block-diagonal mask, and the masked kernels compute every block of the
row's L x L scores, blocked ones included: n times the attention work of the samples alone. Here the LLM attends each
sample to itself only, from cumulative sample boundaries (`cu_seq_lens_q`, the names transformers gives the flash
kwargs): on CUDA through PyTorch's flash `varlen_attn`; elsewhere through one causal sdpa call per sample (the
reference the CUDA kernel is checked against). Calls without boundaries (padded batches, rows after a cached prefix)
are plain sdpa with the mask transformers builds for sdpa.

    register_varlen_attention()
    llm = AutoModelForCausalLM.from_pretrained(path, attn_implementation=VARLEN_ATTENTION)
    llm(inputs_embeds=x, position_ids=pos, **varlen_kwargs(pos))   # x: (1, T, D), pos: (1, T) restarting at 0
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F

VARLEN_ATTENTION = "nextgpt_varlen"
"""The name the attention function is registered under in transformers."""


def sample_boundaries(position_ids: torch.Tensor) -> torch.Tensor:
    """Cumulative sample starts of one flattened row: every position 0 opens a sample.

    Args:
        position_ids: (1, T) positions restarting at 0 at each sample (padding runs are samples of their own).

    Returns:
        (n + 1,) int32: 0, the start of each later sample, T.
    """
    flat = position_ids.reshape(-1)
    starts = (flat == 0).nonzero().flatten()
    if starts.numel() == 0 or int(starts[0]) != 0:
        starts = torch.cat([starts.new_zeros(1), starts])
    end = torch.tensor([flat.numel()], device=flat.device, dtype=starts.dtype)
    return torch.cat([starts, end]).to(torch.int32)


def varlen_kwargs(position_ids: torch.Tensor) -> dict[str, Any]:
    """The keyword arguments the LLM passes down to `varlen_attention_forward` for a flattened packed row."""
    cu = sample_boundaries(position_ids)
    longest = int((cu[1:] - cu[:-1]).max())
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}


def _repeat_heads(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, H_kv, T, D) -> (B, H_kv * groups, T, D) for grouped-query attention."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def _reference(query, key, value, cu: torch.Tensor, scaling: float | None) -> torch.Tensor:
    """One causal sdpa call per sample: (1, H, T, D) -> (1, T, H, D)."""
    bounds = cu.tolist()
    outs = [
        F.scaled_dot_product_attention(
            query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], is_causal=True, scale=scaling
        )
        for s, e in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    return torch.cat(outs, dim=2).transpose(1, 2)


def _flash(query, key, value, cu: torch.Tensor, longest: int, scaling: float | None) -> torch.Tensor:
    """PyTorch's flash varlen kernel: (1, H, T, D) -> (1, T, H, D)."""
    from torch.nn.attention.varlen import varlen_attn

    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # (1, H, T, D) -> (T, H, D)
    params = inspect.signature(varlen_attn).parameters
    causal = {"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)}
    out = varlen_attn(q, k, v, cu, cu, longest, longest, scale=scaling, **causal)  # (T, H, D)
    return out.unsqueeze(0)


def flash_varlen_available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether PyTorch's flash varlen kernel can run here (CUDA, half precision, a PyTorch that has it)."""
    if device.type != "cuda" or dtype not in (torch.float16, torch.bfloat16):
        return False
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


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
        attention_mask: ignored when `cu_seq_lens_q` is given (the boundaries say everything).
        dropout: attention dropout (must be 0 with boundaries: training here never uses it).
        scaling: softmax scale.
        kwargs: `cu_seq_lens_q` / `max_length_q` from `varlen_kwargs`, or nothing.

    Returns:
        (1, T, H, D) attention output, no weights.
    """
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling)
    if query.shape[0] != 1 or dropout:
        raise ValueError("varlen attention takes one flattened row and no attention dropout")
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = _repeat_heads(key, groups), _repeat_heads(value, groups)
    if flash_varlen_available(query.device, query.dtype):
        return _flash(query, key, value, cu, int(kwargs["max_length_q"]), scaling), None
    return _reference(query, key, value, cu, scaling), None


def register_varlen_attention() -> None:
    """Make `VARLEN_ATTENTION` a transformers attention implementation (masks as for sdpa); idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(VARLEN_ATTENTION, varlen_attention_forward)
    AttentionMaskInterface.register(VARLEN_ATTENTION, sdpa_mask)
