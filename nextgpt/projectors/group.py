"""GroupViT-style building blocks of the grouping input projector (paper v3 §3 / App. C.1).

Owns the attention blocks, the hard (Gumbel) token-to-group assignment and one grouping stage. Parameter
names follow the public GroupViT / NExT-GPT layout (`blocks.0.attn.qkv`, `downsample.assign.q_proj`, ...)
so that a grouping-projector state dict from that code loads unchanged.

    stage = GroupingStage(dim=32, depth=2, num_heads=2, num_group_tokens=16, num_prev_group_tokens=0)
    x, group_tokens = stage(torch.randn(4, 1, 32), None)  # x: (4, 16, 32) after grouping
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Mlp(nn.Module):
    """Two-layer GELU MLP (`fc1` -> GELU -> `fc2`).

    Args:
        in_dim: input width.
        hidden_dim: width of the hidden layer.
        out_dim: output width; defaults to `in_dim`.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim or in_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP on the last dimension.

        Args:
            x: (..., in_dim).

        Returns:
            (..., out_dim).
        """
        return self.fc2(F.gelu(self.fc1(x)))


class MixerMlp(Mlp):
    """An `Mlp` applied across the token axis (MLP-Mixer token mixing): maps S_in tokens to S_out tokens."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mix tokens.

        Args:
            x: (B, S_in, C).

        Returns:
            (B, S_out, C).
        """
        return super().forward(x.transpose(1, 2)).transpose(1, 2)  # (B, C, S_in) -> (B, S_out, C)


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    batch_size, num_tokens, dim = x.shape
    return x.view(batch_size, num_tokens, num_heads, dim // num_heads).transpose(1, 2)  # (B, N, C) -> (B, H, N, C/H)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    batch_size, num_heads, num_tokens, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch_size, num_tokens, num_heads * head_dim)  # (B, H, N, C/H) -> (B, N, C)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused `qkv` projection.

    Args:
        dim: token width.
        num_heads: attention heads; must divide `dim`.
        qkv_bias: whether the fused qkv projection has a bias.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend every token to every token.

        Args:
            x: (B, N, C).

        Returns:
            (B, N, C).
        """
        q, k, v = (_split_heads(t, self.num_heads) for t in self.qkv(x).chunk(3, dim=-1))
        return self.proj(_merge_heads(F.scaled_dot_product_attention(q, k, v)))


class CrossAttention(nn.Module):
    """Multi-head attention from queries to a separate key/value sequence (separate q/k/v projections).

    Args:
        dim: token width.
        num_heads: attention heads; must divide `dim`.
        qkv_bias: whether the q/k/v projections have a bias.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.k_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.v_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """Attend queries to keys.

        Args:
            query: (B, N, C).
            key: (B, S, C), also used as values.

        Returns:
            (B, N, C).
        """
        q = _split_heads(self.q_proj(query), self.num_heads)
        k = _split_heads(self.k_proj(key), self.num_heads)
        v = _split_heads(self.v_proj(key), self.num_heads)
        return self.proj(_merge_heads(F.scaled_dot_product_attention(q, k, v)))


class AttnBlock(nn.Module):
    """Pre-norm Transformer block (self-attention + MLP) run over image tokens and group tokens together.

    Args:
        dim: token width.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width as a multiple of `dim`.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, num_heads, qkv_bias=False)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to (B, N, C) tokens; returns (B, N, C)."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CrossAttnBlock(nn.Module):
    """Cross-attention block with a post-norm (GroupViT's `pre_assign_attn`): group tokens read the input tokens.

    Args:
        dim: width of the group tokens and the input tokens.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width as a multiple of `dim`.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.attn = CrossAttention(dim, num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_post = nn.LayerNorm(dim)

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Args:
            query: (B, N, C) group tokens.
            key: (B, S, C) input tokens.

        Returns:
            (B, N, C).
        """
        x = query + self.attn(query, key)
        return self.norm_post(x + self.mlp(self.norm2(x)))


def compute_hard_assignment(logits: torch.Tensor, dim: int, gumbel: bool, tau: float = 1.0) -> torch.Tensor:
    """One-hot assignment along `dim` with straight-through gradients of the (Gumbel-)softmax.

    Forward values are exactly one-hot (argmax); backward uses the gradient of the soft distribution
    (paper v3 App. C.1). With `gumbel=True` Gumbel(0, 1) noise is added before the softmax (training).

    Args:
        logits: assignment scores, any shape.
        dim: the axis to choose along (the groups).
        gumbel: add Gumbel noise (stochastic) or not (deterministic argmax).
        tau: softmax temperature.

    Returns:
        A tensor like `logits` holding one-hot vectors along `dim`.
    """
    scores = logits.float()
    if gumbel:
        # -log(-log(U)) with U kept away from 0 and 1: exponential_() can return 0 and give inf noise.
        uniform = torch.rand_like(scores).clamp_(torch.finfo(scores.dtype).tiny, 1.0 - 1e-7)
        scores = scores - torch.log(-torch.log(uniform))
    soft = torch.softmax(scores / tau, dim=dim)
    hard = torch.zeros_like(soft).scatter_(dim, soft.argmax(dim=dim, keepdim=True), 1.0)
    return (hard - soft.detach() + soft).to(logits.dtype)


class AssignAttention(nn.Module):
    """Single-head attention whose weights are a hard assignment of every input token to one group.

    Each group then averages the values of its tokens (divided by count + 1, GroupViT's `assign_eps`).

    Args:
        dim: token width.
        gumbel_tau: Gumbel-softmax temperature used in training.
    """

    def __init__(self, dim: int, gumbel_tau: float = 1.0) -> None:
        super().__init__()
        self.scale = dim**-0.5
        self.gumbel_tau = gumbel_tau
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, group_tokens: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Pool the input tokens into the groups they are assigned to.

        Args:
            group_tokens: (B, N, C) queries, one per output group.
            x: (B, S, C) input tokens.

        Returns:
            (B, N, C) pooled group features.
        """
        logits = self.q_proj(group_tokens) @ self.k_proj(x).transpose(1, 2) * self.scale  # (B, N, S)
        # Softmax over groups (dim -2): each input token picks one group. Stochastic only while training.
        assignment = compute_hard_assignment(logits, dim=-2, gumbel=self.training, tau=self.gumbel_tau)
        assignment = assignment / (assignment.sum(dim=-1, keepdim=True) + 1.0)
        return self.proj(assignment @ self.v_proj(x))


class GroupingBlock(nn.Module):
    """Merge input tokens into `num_output_groups` new tokens (GroupViT grouping block).

    Args:
        dim: token width.
        num_heads: heads of the pre-assignment cross-attention.
        num_group_tokens: group tokens coming in.
        num_output_groups: tokens going out.
        mlp_ratio: hidden width multiple of the channel MLPs.
    """

    def __init__(self, dim: int, num_heads: int, num_group_tokens: int, num_output_groups: int, mlp_ratio: float):
        super().__init__()
        self.norm_tokens = nn.LayerNorm(dim)
        self.mlp_inter = Mlp(num_group_tokens, dim // 2, num_output_groups)
        self.norm_post_tokens = nn.LayerNorm(dim)
        self.norm_x = nn.LayerNorm(dim)
        self.pre_assign_attn = CrossAttnBlock(dim, num_heads, mlp_ratio)
        self.assign = AssignAttention(dim)
        self.norm_new_x = nn.LayerNorm(dim)
        self.mlp_channels = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, group_tokens: torch.Tensor) -> torch.Tensor:
        """Group the input tokens.

        Args:
            x: (B, S, C) input tokens.
            group_tokens: (B, S_1, C) group tokens of this stage.

        Returns:
            (B, S_2, C) grouped tokens, S_2 = `num_output_groups`.
        """
        group_tokens = self.norm_tokens(group_tokens)
        x = self.norm_x(x)
        # (B, S_1, C) -> (B, S_2, C): token-mixing MLP over the group axis.
        projected = self.norm_post_tokens(self.mlp_inter(group_tokens.transpose(1, 2)).transpose(1, 2))
        projected = self.pre_assign_attn(projected, x)
        new_x = self.assign(projected, x) + projected
        return new_x + self.mlp_channels(self.norm_new_x(new_x))


class GroupingStage(nn.Module):
    """One stage: Transformer blocks over [tokens; group tokens], then (if it has group tokens) a grouping block.

    The learned group tokens of a later stage are offset by a MixerMlp projection of the previous stage's
    group tokens; those learned tokens then start at zero (GroupViT `zero_init_group_token`).

    Args:
        dim: token width.
        depth: number of `AttnBlock`s.
        num_heads: attention heads.
        num_group_tokens: learned group tokens (= output groups); 0 for the last stage (no grouping).
        num_prev_group_tokens: group tokens of the previous stage; 0 for the first stage.
        mlp_ratio: MLP hidden width multiple.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        num_group_tokens: int,
        num_prev_group_tokens: int,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.num_group_tokens = num_group_tokens
        self.blocks = nn.ModuleList(AttnBlock(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.group_token: nn.Parameter | None = None
        self.group_projector: nn.Sequential | None = None
        self.downsample: GroupingBlock | None = None
        if num_group_tokens > 0:
            self.group_token = nn.Parameter(torch.zeros(1, num_group_tokens, dim))
            if num_prev_group_tokens > 0:
                mixer = MixerMlp(num_prev_group_tokens, dim // 2, num_group_tokens)
                self.group_projector = nn.Sequential(nn.LayerNorm(dim), mixer)
            else:
                nn.init.trunc_normal_(self.group_token, std=0.02)
            self.downsample = GroupingBlock(dim, num_heads, num_group_tokens, num_group_tokens, mlp_ratio)

    def forward(
        self, x: torch.Tensor, prev_group_tokens: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the stage.

        Args:
            x: (B, S, C) tokens.
            prev_group_tokens: (B, S_prev, C) group tokens of the previous stage, or None for the first.

        Returns:
            `(x, group_tokens)`: x is (B, num_group_tokens, C) after grouping (unchanged length for the last
            stage); group_tokens is this stage's (B, num_group_tokens, C) group tokens after the blocks, or None.
        """
        num_tokens = x.shape[1]
        if self.group_token is not None:
            group_tokens = self.group_token.expand(x.shape[0], -1, -1)  # (1, G, C) -> (B, G, C)
            if self.group_projector is not None:
                if prev_group_tokens is None:
                    raise ValueError("this grouping stage expects the previous stage's group tokens, got None")
                group_tokens = group_tokens + self.group_projector(prev_group_tokens)
            x = torch.cat([x, group_tokens], dim=1)  # (B, S, C) -> (B, S + G, C)
        for block in self.blocks:
            x = block(x)
        if self.downsample is None:
            return x, None
        x, group_tokens = x[:, :num_tokens], x[:, num_tokens:]
        return self.downsample(x, group_tokens), group_tokens
