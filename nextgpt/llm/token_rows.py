"""New token rows: the frozen vocabulary matrices plus small trainable blocks for the added (signal) tokens.

`embed_tokens` and `lm_head` are replaced by modules that keep the original rows frozen and hold only the
N_new added rows as trainable parameters (named `new_rows`), so optimisers and DeepSpeed see 2 × N_new × D
trainable values instead of two full V × D matrices (spec §7.3). New rows start at the mean of the base rows.
`fold_token_rows` turns them back into plain `nn.Embedding` / `nn.Linear` for merging and export.

    attach_token_rows(model, num_base_tokens=32000, num_tokens=len(tokenizer))
    state = token_rows_state_dict(model)        # {"embed_tokens.new_rows": (36, D), "lm_head.new_rows": (36, D), ...}
    fold_token_rows(model)                      # plain HF modules again; config records the base vocabulary size
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

NUM_BASE_TOKENS_KEY = "nextgpt_num_base_tokens"
"""config.json field of an exported folder: rows below it are the original vocabulary, rows above were added."""

_STATE_KEYS = ("embed_tokens.new_rows", "lm_head.new_rows", "num_base_tokens")


class _TokenRows(nn.Module):
    """Frozen base rows (`base_weight`) plus trainable added rows (`new_rows`) of one vocabulary matrix.

    Args:
        base_weight: (V_base, D) original rows (kept frozen).
        new_rows: (N_new, D) rows of the added tokens (trainable).
    """

    def __init__(self, base_weight: torch.Tensor, new_rows: torch.Tensor) -> None:
        super().__init__()
        self.base_weight = nn.Parameter(base_weight, requires_grad=False)
        self.new_rows = nn.Parameter(new_rows)
        self.base_rows_changed = False
        """True once a checkpoint replaced the base rows (legacy whole-matrix training): saves then include them."""

    @property
    def num_base_tokens(self) -> int:
        """Rows of the original vocabulary."""
        return self.base_weight.shape[0]

    @property
    def num_tokens(self) -> int:
        """All rows, base + new."""
        return self.base_weight.shape[0] + self.new_rows.shape[0]

    @property
    def row_dim(self) -> int:
        """Row width D."""
        return self.base_weight.shape[1]

    @property
    def weight(self) -> torch.Tensor:
        """The full (V, D) matrix, for code that reads `.weight` (a fresh tensor; gradients reach `new_rows`)."""
        return torch.cat([self.base_weight, self.new_rows], dim=0)

    def extra_repr(self) -> str:
        return f"{self.num_base_tokens} frozen + {self.new_rows.shape[0]} trainable rows, dim {self.row_dim}"


class TokenRowsEmbedding(_TokenRows):
    """Input embedding whose base rows are frozen and whose added rows are a separate trainable parameter.

    Args:
        base_weight: (V_base, D) original rows (kept frozen).
        new_rows: (N_new, D) rows of the added tokens (trainable).
        padding_idx: kept for folding back into `nn.Embedding`.
    """

    def __init__(self, base_weight: torch.Tensor, new_rows: torch.Tensor, padding_idx: int | None = None) -> None:
        super().__init__(base_weight, new_rows)
        self.padding_idx = padding_idx

    # The attribute names of `nn.Embedding`, for code that reads them.
    num_embeddings = _TokenRows.num_tokens
    embedding_dim = _TokenRows.row_dim

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Look up ids in [0, V); negative or too-large ids raise an index error.

        Args:
            input_ids: (...,) token ids.

        Returns:
            (..., D) embeddings.
        """
        num_base = self.num_base_tokens
        is_new = input_ids >= num_base
        base = F.embedding(input_ids.clamp(max=num_base - 1), self.base_weight)  # (..., D)
        new = F.embedding((input_ids - num_base).clamp(min=0), self.new_rows)  # (..., D)
        return torch.where(is_new.unsqueeze(-1), new, base)


class TokenRowsHead(_TokenRows):
    """LM head whose base rows are frozen and whose added rows are a separate trainable parameter.

    Args:
        base_weight: (V_base, D) original rows (kept frozen).
        new_rows: (N_new, D) rows of the added tokens (trainable).
    """

    # The attribute names of `nn.Linear`, for code that reads them.
    in_features = _TokenRows.row_dim
    out_features = _TokenRows.num_tokens

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the whole vocabulary.

        Args:
            hidden: (..., D) hidden states.

        Returns:
            (..., V) logits; the last N_new columns come from `new_rows`.
        """
        # Two matmuls and a concat keep the weight gradient to (N_new, D) instead of a full (V, D) buffer.
        return torch.cat([F.linear(hidden, self.base_weight), F.linear(hidden, self.new_rows)], dim=-1)  # (..., V)


def _hf_model(model: nn.Module) -> PreTrainedModel:
    """The transformers model inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _token_rows_modules(model: nn.Module) -> tuple[TokenRowsEmbedding, TokenRowsHead]:
    hf_model = _hf_model(model)
    embedding, head = hf_model.get_input_embeddings(), hf_model.get_output_embeddings()
    if not isinstance(embedding, TokenRowsEmbedding) or not isinstance(head, TokenRowsHead):
        raise ValueError(
            "the model has no trainable token rows (embed_tokens/lm_head are "
            f"{type(embedding).__name__}/{type(head).__name__}); load it with nextgpt.llm.backbone.load_llm"
        )
    return embedding, head


def _base_rows(old: torch.Tensor, num_base_tokens: int) -> torch.Tensor:
    """Rows [0, num_base): the original tensor itself when it has no added rows (no copy of the big matrix)."""
    return old.detach() if old.shape[0] == num_base_tokens else old[:num_base_tokens].detach().clone()


def _new_rows(old: torch.Tensor, num_base_tokens: int, num_tokens: int) -> torch.Tensor:
    """Rows [num_base, num_tokens): existing rows above the base are kept, missing ones start at the base mean."""
    kept = old[num_base_tokens:num_tokens].clone()
    num_missing = num_tokens - num_base_tokens - kept.shape[0]
    mean = old[:num_base_tokens].float().mean(dim=0, keepdim=True).to(old.dtype)  # (1, D)
    return torch.cat([kept, mean.expand(num_missing, -1)], dim=0)  # (N_new, D)


def attach_token_rows(model: PreTrainedModel, num_base_tokens: int, num_tokens: int) -> None:
    """Replace `embed_tokens` and `lm_head` with frozen-base + trainable-new-rows modules, in place.

    Rows the checkpoint already has above `num_base_tokens` (a merged export) keep their values; rows it
    lacks are initialised to the mean of the base rows, in both matrices.

    Args:
        model: a transformers causal LM with untied `nn.Embedding` / `nn.Linear` vocabulary matrices.
        num_base_tokens: rows of the original vocabulary (frozen).
        num_tokens: rows after adding tokens (`len(tokenizer)`).

    Raises:
        ValueError: tied embeddings, unexpected module types, or `num_tokens` not above `num_base_tokens`.
    """
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    if not isinstance(embedding, nn.Embedding) or not isinstance(head, nn.Linear) or head.bias is not None:
        raise ValueError(
            "token rows need an nn.Embedding input table and a bias-free nn.Linear LM head, got "
            f"{type(embedding).__name__} and {type(head).__name__}"
        )
    if embedding.weight.data_ptr() == head.weight.data_ptr():
        raise ValueError("tied input/output embeddings are not supported; use an untied LLaMA/Vicuna checkpoint")
    if not num_base_tokens < num_tokens:
        raise ValueError(f"expected more tokens ({num_tokens}) than base rows ({num_base_tokens}); add signal tokens")
    with torch.no_grad():
        new_embedding = TokenRowsEmbedding(
            _base_rows(embedding.weight, num_base_tokens),
            _new_rows(embedding.weight, num_base_tokens, num_tokens),
            padding_idx=embedding.padding_idx,
        )
        new_head = TokenRowsHead(
            _base_rows(head.weight, num_base_tokens), _new_rows(head.weight, num_base_tokens, num_tokens)
        )
    model.set_input_embeddings(new_embedding)
    model.set_output_embeddings(new_head)
    model.config.vocab_size = num_tokens
    setattr(model.config, NUM_BASE_TOKENS_KEY, num_base_tokens)
    logger.info(
        "token rows: %d frozen base rows, %d trainable new rows per matrix",
        num_base_tokens,
        num_tokens - num_base_tokens,
    )


def get_num_base_tokens(model: nn.Module) -> int:
    """Rows of the original vocabulary of a model with token rows (peft-wrapped or not).

    Args:
        model: a model from `load_llm` (optionally with LoRA).

    Returns:
        The number of frozen base rows; ids at or above it are added tokens.

    Raises:
        ValueError: the model has no token-rows modules.
    """
    return _token_rows_modules(model)[0].num_base_tokens


def fold_token_rows(model: nn.Module) -> None:
    """Write the learned rows back into plain `nn.Embedding` / `nn.Linear` modules (frozen), in place.

    The config keeps `nextgpt_num_base_tokens`, so a folder saved afterwards reloads without adding rows.

    Args:
        model: a model from `load_llm` (optionally with LoRA).

    Raises:
        ValueError: the model has no token-rows modules.
    """
    embedding, head = _token_rows_modules(model)
    hf_model = _hf_model(model)
    with torch.no_grad():
        plain_embedding = nn.Embedding(
            embedding.num_embeddings,
            embedding.embedding_dim,
            padding_idx=embedding.padding_idx,
            _weight=embedding.weight.detach(),
            _freeze=True,
        )
        plain_head = nn.Linear(head.in_features, head.out_features, bias=False, device="meta")
        plain_head.weight = nn.Parameter(head.weight.detach(), requires_grad=False)
    hf_model.set_input_embeddings(plain_embedding)
    hf_model.set_output_embeddings(plain_head)
    setattr(hf_model.config, NUM_BASE_TOKENS_KEY, embedding.num_base_tokens)


def token_rows_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The learned rows only, for checkpoints (a few kB instead of two vocabulary matrices).

    Args:
        model: a model from `load_llm` (optionally with LoRA).

    Returns:
        {"embed_tokens.new_rows": (N_new, D), "lm_head.new_rows": (N_new, D), "num_base_tokens": (1,) int64}.

    Raises:
        ValueError: the model has no token-rows modules.
    """
    embedding, head = _token_rows_modules(model)
    return {
        "embed_tokens.new_rows": embedding.new_rows.detach().clone(),
        "lm_head.new_rows": head.new_rows.detach().clone(),
        "num_base_tokens": torch.tensor([embedding.num_base_tokens], dtype=torch.int64),
    }


def load_token_rows_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy rows saved by `token_rows_state_dict` into the model, in place.

    Args:
        model: a model from `load_llm` (optionally with LoRA) with the same vocabulary.
        state: the saved dict.

    Raises:
        ValueError: missing/unexpected keys, another base vocabulary, or other row shapes.
    """
    embedding, head = _token_rows_modules(model)
    if set(state) != set(_STATE_KEYS):
        raise ValueError(f"token-row state must have keys {sorted(_STATE_KEYS)}, got {sorted(state)}")
    saved_base = int(state["num_base_tokens"].reshape(-1)[0])
    if saved_base != embedding.num_base_tokens:
        raise ValueError(
            f"token rows were saved for a base vocabulary of {saved_base} rows, the model has "
            f"{embedding.num_base_tokens}; load them into the same base LLM"
        )
    for name, target in (("embed_tokens.new_rows", embedding.new_rows), ("lm_head.new_rows", head.new_rows)):
        if tuple(state[name].shape) != tuple(target.shape):
            raise ValueError(
                f"{name} has shape {tuple(state[name].shape)}, the model expects {tuple(target.shape)}; "
                "use the same model.signal_tokens as when the rows were saved"
            )
        with torch.no_grad():
            target.copy_(state[name].to(device=target.device, dtype=target.dtype))
