"""The frozen ImageBind encoder (vision and audio towers) and strict loading of `imagebind_huge.pth`.

Parameter names and shapes are those of the official checkpoint; sizes come from `ImageBindConfig` (defaults =
ImageBind-Huge). Keys of the modalities NExT-GPT never reads (text, depth, thermal, imu) are skipped by name;
any other missing, unexpected or mis-shaped key is an error.

    encoder = load_imagebind(cfg.model.encoder, device="cuda")
    vectors = encoder(Modality.VIDEO, load_video(path, cfg.model.encoder)[None])  # (1, 15, 3, 2, 224, 224) -> (1, 1024)
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from nextgpt.config import ImageBindConfig
from nextgpt.constants import Modality
from nextgpt.encoders.imagebind_layers import (
    VIDEO_FRAMES,
    L2Normalize,
    LogitScale,
    TransformerTrunk,
    build_audio_preprocessor,
    build_head,
    build_vision_preprocessor,
)

logger = logging.getLogger(__name__)

TOWER_OF: dict[Modality, str] = {Modality.IMAGE: "vision", Modality.VIDEO: "vision", Modality.AUDIO: "audio"}
"""Official tower key of each modality (images and videos share the vision tower)."""
UNUSED_MODALITIES: tuple[str, ...] = ("text", "depth", "thermal", "imu")
"""Official towers whose checkpoint keys are skipped on load."""
MODULE_GROUPS: tuple[str, ...] = (
    "modality_preprocessors",
    "modality_trunks",
    "modality_heads",
    "modality_postprocessors",
)
AUDIO_DROP_PATH = 0.1
"""Official ImageBind-Huge audio stochastic depth; inert here because the encoder never leaves eval mode."""
AUDIO_LOGIT_SCALE = 20.0
"""Official audio temperature; its buffer is loaded but not applied (NExT-GPT keeps only the L2 normalisation)."""
_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ImageBindEncoder(nn.Module):
    """Frozen ImageBind vision + audio towers returning one embedding per media item.

    Images and each clip of a video or audio are encoded separately, L2-normalised, and the clip vectors are
    averaged, as in the official `ImageBindModel.forward` (the mean of unit vectors is not re-normalised).
    Audio uses only the L2 normalisation of its postprocessor, not the x20 logit scale: both NExT-GPT code bases
    call `modality_postprocessors["audio"][0]` only, so the input projectors were trained on unit-scale audio.

    The module is always in eval mode and runs without gradients; `train()` keeps it in eval mode so that the
    audio tower's stochastic depth never perturbs the frozen features.

    Args:
        cfg: encoder sizes (`model.encoder`).
    """

    def __init__(self, cfg: ImageBindConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.modality_preprocessors = nn.ModuleDict(
            {
                "vision": build_vision_preprocessor(cfg.vision_embed_dim, cfg.vision_patch_size, cfg.image_size),
                "audio": build_audio_preprocessor(
                    cfg.audio_embed_dim,
                    cfg.audio_patch_size,
                    cfg.audio_patch_stride,
                    cfg.audio_num_mel_bins,
                    cfg.audio_target_frames,
                ),
            }
        )
        self.modality_trunks = nn.ModuleDict(
            {
                "vision": TransformerTrunk(
                    cfg.vision_embed_dim, cfg.vision_num_blocks, cfg.vision_num_heads, pre_layer_norm=True
                ),
                "audio": TransformerTrunk(
                    cfg.audio_embed_dim,
                    cfg.audio_num_blocks,
                    cfg.audio_num_heads,
                    add_bias_kv=True,
                    drop_path_rate=AUDIO_DROP_PATH,
                ),
            }
        )
        self.modality_heads = nn.ModuleDict(
            {
                "vision": build_head(cfg.vision_embed_dim, cfg.out_embed_dim),
                "audio": build_head(cfg.audio_embed_dim, cfg.out_embed_dim),
            }
        )
        self.modality_postprocessors = nn.ModuleDict(
            {"vision": L2Normalize(), "audio": nn.Sequential(L2Normalize(), LogitScale(AUDIO_LOGIT_SCALE))}
        )
        self.requires_grad_(False)
        self.eval()

    @property
    def out_dim(self) -> int:
        """Width of the returned embeddings (`out_embed_dim`, 1024 for Huge)."""
        return self.cfg.out_embed_dim

    def train(self, mode: bool = True) -> ImageBindEncoder:
        """Keep the frozen encoder in eval mode whatever `mode` is.

        Args:
            mode: ignored.

        Returns:
            self.
        """
        return super().train(False)

    def _check_inputs(self, modality: Modality, inputs: torch.Tensor) -> None:
        cfg = self.cfg
        side = cfg.image_size
        expected = {
            Modality.IMAGE: ((3, side, side), "(B, 3, {s}, {s})"),
            Modality.VIDEO: ((3, VIDEO_FRAMES, side, side), "(B, num_clips*num_crops, 3, {t}, {s}, {s})"),
            Modality.AUDIO: ((1, cfg.audio_num_mel_bins, cfg.audio_target_frames), "(B, num_clips, 1, {m}, {f})"),
        }
        if modality not in expected:
            raise ValueError(f"ImageBind encodes image, video or audio, got modality {modality!r}; use a Modality")
        trailing, template = expected[modality]
        ndim = len(trailing) + (1 if modality == Modality.IMAGE else 2)
        if inputs.ndim != ndim or tuple(inputs.shape[-len(trailing) :]) != trailing:
            desc = template.format(s=side, t=VIDEO_FRAMES, m=cfg.audio_num_mel_bins, f=cfg.audio_target_frames)
            raise ValueError(
                f"ImageBind {modality.value} input must be {desc}, got shape {tuple(inputs.shape)}; "
                f"build it with nextgpt.encoders.transforms.load_{modality.value} and stack along dim 0"
            )

    @torch.no_grad()
    def encode_clips(self, modality: Modality, inputs: torch.Tensor) -> torch.Tensor:
        """Encode every image / clip separately into unit-length vectors.

        Args:
            modality: which kind of input.
            inputs: image (B, 3, S, S); video (B, N, 3, 2, S, S); audio (B, N, 1, mel, frames).

        Returns:
            (B, N, out_dim) L2-normalised clip embeddings (N = 1 for images), in the encoder's dtype.

        Raises:
            ValueError: on a wrong modality or input shape.
        """
        self._check_inputs(modality, inputs)
        param = self.modality_heads["vision"][2].weight
        inputs = inputs.to(device=param.device, dtype=param.dtype)
        if modality == Modality.IMAGE:
            inputs = inputs.unsqueeze(1)  # (B, 3, S, S) -> (B, 1, 3, S, S)
        batch, num_clips = inputs.shape[:2]
        clips = inputs.reshape(batch * num_clips, *inputs.shape[2:])  # (B, N, ...) -> (B*N, ...)
        tower = TOWER_OF[modality]
        tokens = self.modality_preprocessors[tower](clips)
        tokens = self.modality_trunks[tower](tokens)
        pooled = self.modality_heads[tower](tokens)
        postprocessor = self.modality_postprocessors[tower]
        # Audio: the Normalize only (index 0), as NExT-GPT uses it; the logit scale stays unused.
        vectors = postprocessor[0](pooled) if tower == "audio" else postprocessor(pooled)
        return vectors.reshape(batch, num_clips, -1)  # (B*N, D) -> (B, N, D)

    @torch.no_grad()
    def forward(self, modality: Modality, inputs: torch.Tensor) -> torch.Tensor:
        """Encode a batch of media items into one vector each.

        Args:
            modality: which kind of input.
            inputs: image (B, 3, S, S); video (B, num_clips*num_crops, 3, 2, S, S); audio
                (B, num_clips, 1, mel, frames).

        Returns:
            (B, out_dim): the clip embeddings averaged per item (unit length for images).

        Raises:
            ValueError: on a wrong modality or input shape.
        """
        return self.encode_clips(modality, inputs).mean(dim=1)  # (B, N, D) -> (B, D)


def split_unused_keys(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], Counter[str]]:
    """Separate the keys of the towers NExT-GPT does not use (text, depth, thermal, imu).

    Args:
        state_dict: a full ImageBind state dict.

    Returns:
        The remaining entries, and the number of skipped keys per unused modality.
    """
    kept: dict[str, torch.Tensor] = {}
    skipped: Counter[str] = Counter()
    for key, value in state_dict.items():
        parts = key.split(".")
        if len(parts) > 2 and parts[0] in MODULE_GROUPS and parts[1] in UNUSED_MODALITIES:
            skipped[parts[1]] += 1
        else:
            kept[key] = value
    return kept, skipped


def _first(keys: set[str] | list[str], limit: int = 5) -> str:
    ordered = sorted(keys)
    more = f" (+{len(ordered) - limit} more)" if len(ordered) > limit else ""
    return ", ".join(ordered[:limit]) + more


def check_state_dict(state_dict: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], path: Path) -> None:
    """Fail unless `state_dict` has exactly the expected keys with the expected shapes.

    Args:
        state_dict: checkpoint entries after the unused modalities were removed.
        expected: the encoder's own state dict (only names and shapes are read).
        path: the checkpoint file, for messages.

    Raises:
        ValueError: naming the first missing, unexpected or mis-shaped keys and the fix.
    """
    fix = "the file does not match model.encoder sizes; for the official file use the defaults (ImageBind-Huge)"
    missing = set(expected) - set(state_dict)
    if missing:
        raise ValueError(f"ImageBind checkpoint {path} lacks {len(missing)} keys: {_first(missing)}; {fix}")
    unexpected = set(state_dict) - set(expected)
    if unexpected:
        raise ValueError(
            f"ImageBind checkpoint {path} has {len(unexpected)} unexpected keys: {_first(unexpected)}; "
            f"expected the official imagebind_huge.pth layout; {fix}"
        )
    wrong = [
        f"{k} {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in sorted(state_dict.items())
        if tuple(v.shape) != tuple(expected[k].shape)
    ]
    if wrong:
        raise ValueError(f"ImageBind checkpoint {path} has {len(wrong)} mis-shaped keys: {_first(wrong)}; {fix}")


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Read an ImageBind `.pth` state dict safely (`weights_only=True`) onto the CPU.

    Args:
        path: the file (`model.encoder.checkpoint_path`).

    Returns:
        The flat name -> tensor mapping.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if it is not a flat state dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"ImageBind checkpoint not found at {path}; set model.encoder.checkpoint_path to imagebind_huge.pth "
            "(or a tiny file written by nextgpt.tiny.imagebind.write_tiny_imagebind)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"could not read ImageBind checkpoint {path} as a torch state dict ({type(err).__name__}: {err}); "
            "expected the official imagebind_huge.pth"
        ) from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"ImageBind checkpoint {path} is not a flat name -> tensor state dict (got {type(state).__name__}); "
            "expected the official imagebind_huge.pth"
        )
    return state


def load_imagebind(cfg: ImageBindConfig, device: str | torch.device = "cpu") -> ImageBindEncoder:
    """Build the encoder at `cfg` sizes and load `cfg.checkpoint_path` strictly.

    Args:
        cfg: `model.encoder`; `checkpoint_path` must point at imagebind_huge.pth or a file with its layout.
        device: where the frozen encoder lives.

    Returns:
        The frozen encoder in eval mode, in `cfg.dtype`.

    Raises:
        ValueError: if no path is set, or the file's keys or shapes do not match the config.
        FileNotFoundError: if the file does not exist.
    """
    if cfg.checkpoint_path is None:
        raise ValueError("model.encoder.checkpoint_path is not set; point it at imagebind_huge.pth")
    path = Path(cfg.checkpoint_path)
    state = read_checkpoint(path)
    kept, skipped = split_unused_keys(state)
    # Built on the meta device: no random init, the checkpoint tensors are assigned directly.
    with torch.device("meta"):
        encoder = ImageBindEncoder(cfg)
    check_state_dict(kept, encoder.state_dict(), path)
    encoder.load_state_dict(kept, strict=True, assign=True)
    encoder.to(device=device, dtype=_TORCH_DTYPES[cfg.dtype])
    encoder.requires_grad_(False)
    encoder.eval()
    per_tower = Counter(key.split(".")[1] for key in kept)
    logger.info(
        "ImageBind loaded from %s: %d tensors (vision %d, audio %d); skipped unused modalities: %s",
        path,
        len(kept),
        per_tower["vision"],
        per_tower["audio"],
        ", ".join(f"{m} {skipped[m]}" for m in UNUSED_MODALITIES),
    )
    return encoder
