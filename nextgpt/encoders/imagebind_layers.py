"""Building modules of the ImageBind towers: patch stems, transformer blocks, heads and postprocessors.

Every attribute name mirrors the official `imagebind_huge.pth` layout (facebookresearch/ImageBind), so a
tower assembled from these modules has exactly the checkpoint's parameter names and shapes.

    stem = build_vision_preprocessor(embed_dim=1280, patch_size=14, image_size=224)
    trunk = TransformerTrunk(embed_dim=1280, num_blocks=32, num_heads=16, pre_layer_norm=True)
    tokens = trunk(stem(images))  # (B, 3, 224, 224) -> (B, 257, 1280)
"""

from __future__ import annotations

import math

import torch
from timm.layers import DropPath
from torch import nn

LAYER_NORM_EPS = 1e-6
"""Epsilon of every trunk and head LayerNorm (the audio stem's LayerNorm keeps PyTorch's 1e-5)."""
VIDEO_FRAMES = 2
"""Temporal kernel and stride of the vision Conv3d stem: images are repeated to this many frames."""
MLP_RATIO = 4


class RepeatToFrames(nn.Module):
    """Turn images into `num_frames`-frame clips by repetition (official `PadIm2Video(pad_type="repeat")`).

    Args:
        num_frames: frames of the output clip.
    """

    def __init__(self, num_frames: int = VIDEO_FRAMES) -> None:
        super().__init__()
        self.num_frames = num_frames

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Repeat single frames; clips that already have frames pass through.

        Args:
            x: (B, C, H, W) images or (B, C, T, H, W) clips.

        Returns:
            (B, C, T', H, W) with T' = `num_frames` when the input had one frame, else T.
        """
        if x.ndim == 4:
            x = x.unsqueeze(2)  # (B, C, H, W) -> (B, C, 1, H, W)
        if x.shape[2] == 1:
            x = x.repeat(1, 1, self.num_frames, 1, 1)  # (B, C, 1, H, W) -> (B, C, T, H, W)
        return x


class PatchStem(nn.Module):
    """Convolutional patchifier followed by an optional LayerNorm (official `PatchEmbedGeneric`).

    Args:
        proj: the patch projection (a Conv2d, or a Sequential ending in a Conv3d).
        norm_layer: LayerNorm over the token width, or None.
    """

    def __init__(self, proj: nn.Module, norm_layer: nn.Module | None = None) -> None:
        super().__init__()
        self.proj = proj
        self.norm_layer = norm_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patchify.

        Args:
            x: image-like input of the projection.

        Returns:
            (B, N, D) patch tokens.
        """
        x = self.proj(x)
        x = x.flatten(2).transpose(1, 2)  # (B, D, [T,] H', W') -> (B, N, D)
        if self.norm_layer is not None:
            x = self.norm_layer(x)
        return x


class PositionEmbedding(nn.Module):
    """Learned position embedding of the CLS token and all patches (official `SpatioTemporalPosEmbeddingHelper`).

    Args:
        num_tokens: CLS + patches.
        embed_dim: token width.
    """

    def __init__(self, num_tokens: int, embed_dim: int) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, embed_dim))
        nn.init.normal_(self.pos_embed, std=embed_dim**-0.5)


class TokenPreprocessor(nn.Module):
    """Stem + CLS token + position embedding: raw input -> transformer tokens (official `RGBDTPreprocessor`).

    Args:
        stem: the patch stem (`PatchStem`).
        num_patches: patches the stem produces for the one supported input size.
        embed_dim: token width.
        input_desc: the expected input shape in words, for error messages.
    """

    def __init__(self, stem: PatchStem, num_patches: int, embed_dim: int, input_desc: str) -> None:
        super().__init__()
        self.rgbt_stem = stem
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        nn.init.normal_(self.cls_token, std=embed_dim**-0.5)
        self.pos_embedding_helper = PositionEmbedding(num_patches + 1, embed_dim)
        self.num_patches = num_patches
        self.input_desc = input_desc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tokenise.

        Args:
            x: input of the stem.

        Returns:
            (B, 1 + num_patches, D) tokens, CLS first.

        Raises:
            ValueError: if the input does not produce `num_patches` patches (the position embedding
                is not interpolated: the checkpoint defines one input size).
        """
        tokens = self.rgbt_stem(x)
        if tokens.shape[1] != self.num_patches:
            raise ValueError(
                f"ImageBind stem expects {self.input_desc} ({self.num_patches} patches), got input "
                f"{tuple(x.shape)} ({tokens.shape[1]} patches); preprocess media with nextgpt.encoders.transforms"
            )
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)  # (1, 1, D) -> (B, 1, D)
        tokens = torch.cat((cls, tokens), dim=1)  # (B, N, D) -> (B, 1 + N, D)
        return tokens + self.pos_embedding_helper.pos_embed


class Mlp(nn.Module):
    """Two-layer GELU feed-forward network (keys `fc1`, `fc2`).

    Args:
        dim: token width.
        hidden_dim: inner width.
    """

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply fc2(gelu(fc1(x)))."""
        return self.fc2(self.act(self.fc1(x)))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block (official `BlockWithMasking`, no layer scale, no mask).

    Args:
        dim: token width.
        num_heads: attention heads.
        add_bias_kv: learned key/value bias rows (`attn.bias_k` / `attn.bias_v`; audio, depth, thermal, imu).
        drop_path: stochastic-depth rate (only active in training mode).
    """

    def __init__(self, dim: int, num_heads: int, add_bias_kv: bool = False, drop_path: float = 0.0) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, num_heads, bias=True, add_bias_kv=add_bias_kv, batch_first=True)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm_1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, MLP_RATIO * dim)
        self.norm_2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual attention then residual MLP.

        Args:
            x: (B, L, D) tokens.

        Returns:
            (B, L, D) tokens.
        """
        h = self.norm_1(x)
        x = x + self.drop_path(self.attn(h, h, h, need_weights=False)[0])
        return x + self.drop_path(self.mlp(self.norm_2(x)))


class TransformerTrunk(nn.Module):
    """A stack of `TransformerBlock`s with an optional LayerNorm in front (official `SimpleTransformer`).

    Args:
        embed_dim: token width.
        num_blocks: blocks.
        num_heads: attention heads.
        pre_layer_norm: LayerNorm before the first block (vision only; key `pre_transformer_layer.0`).
        add_bias_kv: see `TransformerBlock`.
        drop_path_rate: stochastic depth of the last block; rates rise linearly from 0 over the blocks.
    """

    def __init__(
        self,
        embed_dim: int,
        num_blocks: int,
        num_heads: int,
        pre_layer_norm: bool = False,
        add_bias_kv: bool = False,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(
                f"ImageBind width {embed_dim} is not divisible by {num_heads} heads; "
                "set model.encoder.*_num_heads to a divisor of the width"
            )
        # Plain Python instead of torch.linspace so the trunk can be built on the meta device.
        rates = [drop_path_rate * i / max(num_blocks - 1, 1) for i in range(num_blocks)]
        layers = [nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)] if pre_layer_norm else []
        self.pre_transformer_layer = nn.Sequential(*layers)
        self.blocks = nn.Sequential(*[TransformerBlock(embed_dim, num_heads, add_bias_kv, rate) for rate in rates])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Run all blocks.

        Args:
            tokens: (B, L, D).

        Returns:
            (B, L, D).
        """
        return self.blocks(self.pre_transformer_layer(tokens))


class SelectToken(nn.Module):
    """Pick one token of a sequence (official `SelectElement`; the CLS token at index 0).

    Args:
        index: token position.
    """

    def __init__(self, index: int = 0) -> None:
        super().__init__()
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Select.

        Args:
            x: (B, L, D).

        Returns:
            (B, D).
        """
        return x[:, self.index]


class L2Normalize(nn.Module):
    """Unit-length rows (official `Normalize(dim=-1)`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise over the last dimension."""
        return nn.functional.normalize(x, p=2.0, dim=-1)


class LogitScale(nn.Module):
    """Fixed contrastive temperature (official `LearnableLogitScaling(learnable=False)`; buffer `log_logit_scale`).

    Args:
        scale: the multiplier; stored as its log.
        max_scale: clip of the multiplier.
    """

    def __init__(self, scale: float, max_scale: float = 100.0) -> None:
        super().__init__()
        self.max_scale = max_scale
        self.register_buffer("log_logit_scale", torch.tensor(math.log(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Multiply by exp(log_logit_scale), clipped at `max_scale`."""
        return torch.clip(self.log_logit_scale.exp(), max=self.max_scale) * x


def build_head(embed_dim: int, out_dim: int) -> nn.Sequential:
    """Build a LayerNorm -> CLS -> Linear head (keys `0.weight`, `0.bias`, `2.weight`).

    Args:
        embed_dim: tower width.
        out_dim: shared embedding width.

    Returns:
        The head: (B, L, embed_dim) -> (B, out_dim).
    """
    return nn.Sequential(
        nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS), SelectToken(0), nn.Linear(embed_dim, out_dim, bias=False)
    )


def build_vision_preprocessor(embed_dim: int, patch_size: int, image_size: int) -> TokenPreprocessor:
    """Build the vision tokenizer: repeat to 2 frames, Conv3d (2, p, p) without bias, CLS, position embedding.

    Args:
        embed_dim: vision width.
        patch_size: spatial kernel and stride of the Conv3d.
        image_size: side of the square input.

    Returns:
        Keys `rgbt_stem.proj.1.weight`, `cls_token`, `pos_embedding_helper.pos_embed`.
    """
    kernel = (VIDEO_FRAMES, patch_size, patch_size)
    conv = nn.Conv3d(3, embed_dim, kernel_size=kernel, stride=kernel, bias=False)
    stem = PatchStem(nn.Sequential(RepeatToFrames(VIDEO_FRAMES), conv))
    num_patches = (image_size // patch_size) ** 2
    desc = f"images (B, 3, {image_size}, {image_size}) or clips (B, 3, {VIDEO_FRAMES}, {image_size}, {image_size})"
    return TokenPreprocessor(stem, num_patches, embed_dim, desc)


def build_audio_preprocessor(
    embed_dim: int, patch_size: int, patch_stride: int, num_mel_bins: int, num_frames: int
) -> TokenPreprocessor:
    """Build the audio tokenizer: overlapping Conv2d patches over the fbank, LayerNorm, CLS, position embedding.

    Args:
        embed_dim: audio width.
        patch_size: Conv2d kernel.
        patch_stride: Conv2d stride (patches overlap when smaller than the kernel).
        num_mel_bins: fbank height.
        num_frames: fbank width.

    Returns:
        Keys `rgbt_stem.proj.weight`, `rgbt_stem.norm_layer.{weight,bias}`, `cls_token`,
        `pos_embedding_helper.pos_embed`.
    """
    conv = nn.Conv2d(1, embed_dim, kernel_size=patch_size, stride=patch_stride, bias=False)
    stem = PatchStem(conv, norm_layer=nn.LayerNorm(embed_dim))
    grid_h = (num_mel_bins - patch_size) // patch_stride + 1
    grid_w = (num_frames - patch_size) // patch_stride + 1
    desc = f"fbank clips (B, 1, {num_mel_bins}, {num_frames})"
    return TokenPreprocessor(stem, grid_h * grid_w, embed_dim, desc)
