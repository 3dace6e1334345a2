"""Output projectors: signal-token states of the LLM -> conditioning of a frozen diffusion decoder (spec §1.9).

GILL-style: the last-layer hidden states of a signal span plus the input embeddings of the same tokens go
through a Transformer encoder-decoder whose learned queries become the decoder's `prompt_embeds`.

    projector = OutputProjector(cfg.model.output_projectors.image, llm_dim=4096)
    prompt_embeds = projector(signal_hidden, signal_embeds)  # (N, T, 4096) x2 -> (N, 77, 768)
"""

from __future__ import annotations

import torch
from torch import nn

from nextgpt.config import OutputProjectorConfig, OutputProjectorsConfig
from nextgpt.constants import MODALITIES


class OutputProjector(nn.Module):
    """Linear -> `nn.Transformer` (src = signal states, tgt = learned queries) -> Linear.

    Parameter names (`in_fc`, `tfm`, `out_fc`, `query_embs`) follow the NEW code's `TransformersProjector`,
    so its state dicts load unchanged.

    Args:
        cfg: one modality's `model.output_projectors.<modality>` config.
        llm_dim: LLM hidden width.

    Raises:
        ValueError: if `cfg.num_heads` does not divide `cfg.hidden_dim`.
    """

    def __init__(self, cfg: OutputProjectorConfig, llm_dim: int) -> None:
        super().__init__()
        if cfg.hidden_dim % cfg.num_heads != 0:
            raise ValueError(
                f"output projector hidden_dim {cfg.hidden_dim} is not divisible by num_heads {cfg.num_heads}; "
                "change model.output_projectors.<modality>.num_heads"
            )
        self.llm_dim = llm_dim
        self.num_queries = cfg.num_queries
        self.out_dim = cfg.out_dim
        self.in_fc = nn.Linear(llm_dim, cfg.hidden_dim)
        # Own encoder only to switch off the nested-tensor fast path (unused with norm_first; torch warns).
        encoder_layer = nn.TransformerEncoderLayer(
            cfg.hidden_dim, cfg.num_heads, cfg.ff_dim, cfg.dropout, batch_first=True, norm_first=True
        )
        encoder = nn.TransformerEncoder(
            encoder_layer, cfg.num_encoder_layers, norm=nn.LayerNorm(cfg.hidden_dim), enable_nested_tensor=False
        )
        self.tfm = nn.Transformer(
            d_model=cfg.hidden_dim,
            nhead=cfg.num_heads,
            num_encoder_layers=cfg.num_encoder_layers,
            num_decoder_layers=cfg.num_decoder_layers,
            dim_feedforward=cfg.ff_dim,
            dropout=cfg.dropout,
            batch_first=True,
            norm_first=True,
            custom_encoder=encoder,
        )
        self.out_fc = nn.Linear(cfg.hidden_dim, cfg.out_dim)
        # Small random queries: the NEW code's zero init makes all decoder inputs equal at the start, so the
        # Q outputs begin identical and separate only through the (tiny) gradient differences (spec §7.6).
        self.query_embs = nn.Parameter(torch.empty(1, cfg.num_queries, cfg.hidden_dim))
        nn.init.normal_(self.query_embs, std=0.02)

    def forward(self, signal_hidden: torch.Tensor, signal_embeds: torch.Tensor) -> torch.Tensor:
        """Map signal spans to decoder conditioning.

        Args:
            signal_hidden: (N, T, llm_dim) last-layer hidden states at the signal-token positions.
            signal_embeds: (N, T, llm_dim) input embeddings of those signal tokens.

        Returns:
            (N, num_queries, out_dim).

        Raises:
            ValueError: if the inputs are not both (N, T, llm_dim).
        """
        if signal_hidden.ndim != 3 or signal_hidden.shape[-1] != self.llm_dim:
            raise ValueError(
                f"output projector expects signal_hidden of shape (N, T, {self.llm_dim}), got "
                f"{tuple(signal_hidden.shape)}; pass the hidden states of whole signal spans"
            )
        if signal_embeds.shape != signal_hidden.shape:
            raise ValueError(
                f"output projector expects signal_embeds shaped like signal_hidden {tuple(signal_hidden.shape)}, "
                f"got {tuple(signal_embeds.shape)}; embed exactly the signal-span token ids"
            )
        src = self.in_fc(signal_hidden + signal_embeds)  # (N, T, llm_dim) -> (N, T, hidden)
        tgt = self.query_embs.expand(src.shape[0], -1, -1)  # (1, Q, hidden) -> (N, Q, hidden)
        return self.out_fc(self.tfm(src, tgt))  # (N, Q, hidden) -> (N, Q, out_dim)


def build_output_projectors(cfg: OutputProjectorsConfig, llm_dim: int) -> nn.ModuleDict:
    """Build one `OutputProjector` per modality.

    Args:
        cfg: the `model.output_projectors` config.
        llm_dim: LLM hidden width.

    Returns:
        A ModuleDict keyed by `Modality.value` ("image", "video", "audio").
    """
    return nn.ModuleDict({m.value: OutputProjector(getattr(cfg, m.value), llm_dim) for m in MODALITIES})
