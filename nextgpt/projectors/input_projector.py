"""Input projectors: one ImageBind vector per media item -> `num_tokens` LLM-space tokens.

Three variants (spec §1.3): `linear` (1 token, paper v1), `mlp` (Linear-GELU-Linear, 1 token) and `group`
(GroupViT-style grouping projector, `group_num_tokens[-1]` tokens, the NEW-code default of 8).

    projector = build_input_projector(cfg.model.input_projector, in_dim=1024, llm_dim=4096)
    media_tokens = projector(imagebind_vectors)  # (N, 1024) -> (N, projector.num_tokens, 4096)
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from nextgpt.config import InputProjectorConfig
from nextgpt.projectors.group import GroupingStage

logger = logging.getLogger(__name__)

INPUT_PROJECTOR_TYPES: tuple[str, ...] = ("linear", "mlp", "group")


class InputProjector(nn.Module):
    """What every input projector does: (N, in_dim) encoder vectors -> (N, num_tokens, llm_dim) LLM tokens.

    Subclasses set `in_dim` and `num_tokens` and implement `project`; `forward` checks the input first.
    """

    in_dim: int
    num_tokens: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project.

        Args:
            x: (N, in_dim) encoder vectors.

        Returns:
            (N, num_tokens, llm_dim).

        Raises:
            ValueError: if `x` is not (N, in_dim).
        """
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(
                f"input projector expects encoder vectors of shape (N, {self.in_dim}), got {tuple(x.shape)}; "
                f"pass one pooled vector per media item (model.encoder.out_embed_dim={self.in_dim})"
            )
        return self.project(x)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Map checked (N, in_dim) vectors to (N, num_tokens, llm_dim) tokens."""
        raise NotImplementedError


class LinearProjector(InputProjector, nn.Linear):
    """One linear map to a single LLM token (paper v1 `llama_proj`; keys `weight`/`bias` as in both codes).

    Args:
        in_dim: encoder width.
        llm_dim: LLM hidden width.
    """

    num_tokens: int = 1

    def __init__(self, in_dim: int, llm_dim: int) -> None:
        super().__init__(in_dim, llm_dim)  # reaches nn.Linear: InputProjector adds no constructor
        self.in_dim = in_dim

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_dim) -> (N, 1, llm_dim)."""
        return F.linear(x, self.weight, self.bias).unsqueeze(1)  # (N, D) -> (N, 1, D)


class MLPProjector(InputProjector):
    """Linear-GELU-Linear to a single LLM token.

    Args:
        in_dim: encoder width.
        hidden_dim: width of the hidden layer.
        llm_dim: LLM hidden width.
    """

    num_tokens: int = 1

    def __init__(self, in_dim: int, hidden_dim: int, llm_dim: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        # Attribute name `layer` matches the NEW code's MLP projector state dict.
        self.layer = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, llm_dim))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_dim) -> (N, 1, llm_dim)."""
        return self.layer(x).unsqueeze(1)  # (N, D) -> (N, 1, D)


class GroupProjector(InputProjector):
    """GroupViT-style grouping projector (NEW code `GroupProjector`): in_fc -> grouping stages -> LayerNorm -> out_fc.

    Stage i (all but the last) owns `num_group_tokens[i]` learned group tokens and ends with a hard grouping
    into that many tokens; the last stage only refines them. The pooled ImageBind vector enters as a
    length-1 sequence, so the output tokens are learned queries modulated by that vector. Parameter names
    follow the NEW code (`in_fc`, `layers.<i>.…`, `norm`, `out_fc`) so its state dicts load unchanged.

    Args:
        in_dim: encoder width.
        llm_dim: LLM hidden width.
        width: internal token width.
        num_group_tokens: group tokens per grouping stage, e.g. (64, 8); the last is `num_tokens`.
        depths: Transformer blocks per stage; one more entry than `num_group_tokens`.
        num_heads: attention heads of every stage.
        mlp_ratio: MLP hidden width multiple.

    Raises:
        ValueError: if the stage lists do not fit together or `num_heads` does not divide `width`.
    """

    def __init__(
        self,
        in_dim: int,
        llm_dim: int,
        width: int = 512,
        num_group_tokens: tuple[int, ...] = (64, 8),
        depths: tuple[int, ...] = (6, 3, 3),
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if len(num_group_tokens) < 1 or len(depths) != len(num_group_tokens) + 1:
            raise ValueError(
                f"group projector needs one more depth than grouping stages, got group_num_tokens="
                f"{tuple(num_group_tokens)} and group_depths={tuple(depths)}; e.g. (64, 8) with (6, 3, 3)"
            )
        if min(num_group_tokens) < 1 or width % num_heads != 0:
            raise ValueError(
                f"group projector needs group_num_tokens >= 1 and group_width divisible by group_num_heads, "
                f"got {tuple(num_group_tokens)}, width {width}, heads {num_heads}"
            )
        self.in_dim = in_dim
        self.num_tokens: int = num_group_tokens[-1]
        self.in_fc = nn.Linear(in_dim, width)
        stage_tokens = (*num_group_tokens, 0)
        self.layers = nn.ModuleList(
            GroupingStage(
                dim=width,
                depth=depth,
                num_heads=num_heads,
                num_group_tokens=stage_tokens[i],
                num_prev_group_tokens=stage_tokens[i - 1] if i > 0 and stage_tokens[i] > 0 else 0,
                mlp_ratio=mlp_ratio,
            )
            for i, depth in enumerate(depths)
        )
        self.norm = nn.LayerNorm(width)
        self.out_fc = nn.Linear(width, llm_dim)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_dim) -> (N, num_tokens, llm_dim) through the grouping stages."""
        tokens = self.in_fc(x).unsqueeze(1)  # (N, in_dim) -> (N, 1, width)
        group_tokens = None
        for stage in self.layers:
            tokens, group_tokens = stage(tokens, group_tokens)
        return self.out_fc(self.norm(tokens))


def build_input_projector(cfg: InputProjectorConfig, in_dim: int, llm_dim: int) -> InputProjector:
    """Build the input projector named by `cfg.type`.

    Args:
        cfg: the `model.input_projector` config.
        in_dim: encoder output width (ImageBind: 1024).
        llm_dim: LLM hidden width (Vicuna-7B: 4096).

    Returns:
        The projector; its `num_tokens` says how many LLM tokens each item becomes.

    Raises:
        ValueError: if `cfg.type` is unknown or the group sizes do not fit together.
    """
    if cfg.type == "linear":
        projector: InputProjector = LinearProjector(in_dim, llm_dim)
    elif cfg.type == "mlp":
        projector = MLPProjector(in_dim, cfg.mlp_hidden_dim, llm_dim)
    elif cfg.type == "group":
        projector = GroupProjector(
            in_dim,
            llm_dim,
            width=cfg.group_width,
            num_group_tokens=tuple(cfg.group_num_tokens),
            depths=tuple(cfg.group_depths),
            num_heads=cfg.group_num_heads,
            mlp_ratio=cfg.group_mlp_ratio,
        )
    else:
        raise ValueError(
            f"unknown input projector type {cfg.type!r}; set model.input_projector.type to one of {INPUT_PROJECTOR_TYPES}"
        )
    num_params = sum(p.numel() for p in projector.parameters())
    logger.info(
        "input projector %s: %d tokens per item, %.2fM parameters", cfg.type, projector.num_tokens, num_params / 1e6
    )
    return projector
