"""Write a tiny ImageBind checkpoint: the full official `imagebind_huge.pth` key layout at `ImageBindConfig` sizes.

The vision and audio towers follow the config; the towers NExT-GPT never reads (text, depth, thermal, imu) get
their official key names at `UNUSED_TOWER_SIZES`, so loading exercises the skip path exactly as with the real
file. Every tensor is random (LayerNorm weights near 1) so that equivalence tests are sensitive to each key.

    path = write_tiny_imagebind(Path("checkpoints/tiny/imagebind/imagebind_tiny.pth"), cfg.model.encoder)
    encoder = load_imagebind(dataclasses.replace(cfg.model.encoder, checkpoint_path=path))
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torch import nn

from nextgpt.config import ImageBindConfig
from nextgpt.encoders.imagebind import ImageBindEncoder
from nextgpt.encoders.imagebind_layers import TransformerTrunk

logger = logging.getLogger(__name__)

UNUSED_TOWER_SIZES: dict[str, int] = {"embed_dim": 8, "num_blocks": 1, "num_heads": 1}
"""Width, depth and heads of the text, depth, thermal and imu towers in the tiny file."""
TEXT_VOCAB_SIZE = 49408
TEXT_CONTEXT_LENGTH = 77
DEPTH_THERMAL_PATCH = 16
DEPTH_THERMAL_TOKENS = (224 // DEPTH_THERMAL_PATCH) ** 2 + 1
IMU_PATCH_FEATURES = 48
IMU_TOKENS = 2000 // 8 + 1
UNUSED_LOGIT_SCALES: dict[str, float] = {"text": 1 / 0.07, "depth": 5.0, "thermal": 10.0, "imu": 5.0}
"""Official initial temperatures of the unused towers (text's is a learned parameter, the others buffers)."""
POS_EMBED_STD = 1.5
"""Position embeddings about as large as the patch contents, so that tokens know where they are."""
QUERY_KEY_GAIN = 3.0
"""Query/key rows of every attention get 3x the default scale: sharper, position-dependent attention at init lets
the tiny towers learn where a shape is within their short pretraining (`nextgpt.tiny.pretrain_encoder`); with the
default scales the class token averages all patches alike and position stays at chance for hundreds of steps."""


def _randomize(state: dict[str, torch.Tensor], norm_keys: set[str], gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Fill every tensor with seeded values: LayerNorm weights 1 + noise, position embeddings `POS_EMBED_STD`,
    matrices scaled by 1/sqrt(fan-in) (query/key rows by `QUERY_KEY_GAIN` more)."""
    out: dict[str, torch.Tensor] = {}
    for key, ref in state.items():
        noise = torch.randn(ref.shape, generator=gen)
        if key.endswith("log_logit_scale") or key.endswith(".mask"):
            out[key] = ref.clone()
        elif key in norm_keys:
            out[key] = 1.0 + 0.1 * noise
        elif key.endswith("pos_embed"):
            out[key] = POS_EMBED_STD * noise
        elif ref.ndim >= 2 and ref.shape[0] != 1:
            out[key] = noise / math.sqrt(math.prod(ref.shape[1:]))
            if key.endswith("attn.in_proj_weight"):
                width = ref.shape[1]
                out[key][: 2 * width] *= QUERY_KEY_GAIN  # rows [q; k; v]: scale q and k only
        else:
            out[key] = 0.1 * noise
    return out


def _layer_norm_weights(module: nn.Module, prefix: str = "") -> set[str]:
    return {f"{prefix}{name}.weight" for name, m in module.named_modules() if isinstance(m, nn.LayerNorm)}


def _trunk_entries(prefix: str, add_bias_kv: bool) -> tuple[dict[str, torch.Tensor], set[str]]:
    trunk = TransformerTrunk(
        UNUSED_TOWER_SIZES["embed_dim"],
        UNUSED_TOWER_SIZES["num_blocks"],
        UNUSED_TOWER_SIZES["num_heads"],
        add_bias_kv=add_bias_kv,
    )
    state = {f"{prefix}{k}": v for k, v in trunk.state_dict().items()}
    return state, _layer_norm_weights(trunk, prefix)


def build_unused_tower_state(out_dim: int) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Build zero-filled entries of the official text, depth, thermal and imu towers (names and shapes only).

    Args:
        out_dim: shared embedding width (the heads' output).

    Returns:
        The entries, and the names of their LayerNorm weights.
    """
    dim = UNUSED_TOWER_SIZES["embed_dim"]
    z = torch.zeros
    pre, heads, post = "modality_preprocessors", "modality_heads", "modality_postprocessors"
    state: dict[str, torch.Tensor] = {
        f"{pre}.text.pos_embed": z(1, TEXT_CONTEXT_LENGTH, dim),
        # The causal mask is a persistent buffer in the official file: -inf above the diagonal.
        f"{pre}.text.mask": torch.full((TEXT_CONTEXT_LENGTH, TEXT_CONTEXT_LENGTH), float("-inf")).triu(1),
        f"{pre}.text.token_embedding.weight": z(TEXT_VOCAB_SIZE, dim),
        f"{pre}.imu.pos_embed": z(1, IMU_TOKENS, dim),
        f"{pre}.imu.cls_token": z(1, 1, dim),
        f"{pre}.imu.imu_stem.proj.weight": z(dim, IMU_PATCH_FEATURES),
        f"{heads}.text.proj.0.weight": z(dim),
        f"{heads}.text.proj.0.bias": z(dim),
        f"{heads}.text.proj.1.weight": z(out_dim, dim),
        f"{heads}.imu.0.weight": z(dim),
        f"{heads}.imu.0.bias": z(dim),
        f"{heads}.imu.3.weight": z(out_dim, dim),
    }
    norms = {f"{pre}.imu.imu_stem.norm_layer.weight", f"{heads}.text.proj.0.weight", f"{heads}.imu.0.weight"}
    state[f"{pre}.imu.imu_stem.norm_layer.weight"] = z(dim)
    state[f"{pre}.imu.imu_stem.norm_layer.bias"] = z(dim)
    for tower, stem in (("depth", "depth_stem"), ("thermal", "rgbt_stem")):
        patch = DEPTH_THERMAL_PATCH
        state[f"{pre}.{tower}.cls_token"] = z(1, 1, dim)
        state[f"{pre}.{tower}.{stem}.proj.weight"] = z(dim, 1, patch, patch)
        state[f"{pre}.{tower}.{stem}.norm_layer.weight"] = z(dim)
        state[f"{pre}.{tower}.{stem}.norm_layer.bias"] = z(dim)
        state[f"{pre}.{tower}.pos_embedding_helper.pos_embed"] = z(1, DEPTH_THERMAL_TOKENS, dim)
        state[f"{heads}.{tower}.0.weight"] = z(dim)
        state[f"{heads}.{tower}.0.bias"] = z(dim)
        state[f"{heads}.{tower}.2.weight"] = z(out_dim, dim)
        norms |= {f"{pre}.{tower}.{stem}.norm_layer.weight", f"{heads}.{tower}.0.weight"}
    for tower in ("text", "depth", "thermal", "imu"):
        trunk_state, trunk_norms = _trunk_entries(f"modality_trunks.{tower}.", add_bias_kv=tower != "text")
        state.update(trunk_state)
        norms |= trunk_norms
        state[f"{post}.{tower}.1.log_logit_scale"] = torch.tensor(math.log(UNUSED_LOGIT_SCALES[tower]))
    return state, norms


def write_tiny_imagebind(path: Path, cfg: ImageBindConfig, seed: int = 0) -> Path:
    """Write a random ImageBind state dict with the full official key layout at `cfg` sizes.

    Args:
        path: the `.pth` file to write (parents are created).
        cfg: encoder sizes of the vision and audio towers (e.g. configs/tiny.yaml `model.encoder`).
        seed: random seed of every tensor.

    Returns:
        `path`.
    """
    path = Path(path)
    gen = torch.Generator().manual_seed(seed)
    encoder = ImageBindEncoder(cfg)
    used_state = {k: v.detach().float() for k, v in encoder.state_dict().items()}
    unused_state, unused_norms = build_unused_tower_state(cfg.out_embed_dim)
    norm_keys = _layer_norm_weights(encoder) | unused_norms
    state = _randomize({**used_state, **unused_state}, norm_keys, gen)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    logger.info("tiny ImageBind checkpoint with %d tensors written to %s", len(state), path)
    return path
