"""Tiny diffusers pipelines (SD, ZeroScope, AudioLDM) saved in exactly the real folder formats.

The architectures, component classes and file layout are those of the real checkpoints; only widths,
depths and vocabularies shrink, so the loaders in `nextgpt.decoders` read them like the real folders.

    paths = write_tiny_decoders(Path("checkpoints/tiny/decoders"), image_dim=32, video_dim=24, audio_dim=16)
    paths[Modality.IMAGE]  # checkpoints/tiny/decoders/sd (model_index.json, unet/, vae/, ...)
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AudioLDMPipeline,
    AutoencoderKL,
    DDIMScheduler,
    ModelMixin,
    StableDiffusionPipeline,
    TextToVideoSDPipeline,
    UNet2DConditionModel,
    UNet3DConditionModel,
)
from transformers import (
    ClapTextConfig,
    ClapTextModelWithProjection,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    RobertaTokenizer,
    SpeechT5HifiGan,
    SpeechT5HifiGanConfig,
)

from nextgpt.constants import Modality

logger = logging.getLogger(__name__)

TINY_MAX_TEXT_TOKENS = 77
"""Tokenizer length of every tiny text encoder (the real CLIP length; CLAP's real one is 512)."""
TINY_NUM_MEL_BINS = 16
"""Mel bins of the tiny AudioLDM (real: 64); the VAE and vocoder agree on it."""
TINY_VOCODER_UPSAMPLE_RATES = (8, 5, 4)
"""Product 160 = the real hop length, so one mel frame is 10 ms at 16 kHz as in AudioLDM."""
_TINY_UNET_SIZES: dict[str, Any] = {
    "block_out_channels": (8, 16),
    "layers_per_block": 1,
    "in_channels": 4,
    "out_channels": 4,
}
"""Two levels of 8 and 16 channels over 4 latent channels: every tiny UNet (SD, ZeroScope, AudioLDM)."""
PIPELINE_DIR_NAMES: dict[Modality, str] = {
    Modality.IMAGE: "sd",
    Modality.VIDEO: "zeroscope",
    Modality.AUDIO: "audioldm",
}


def _byte_to_unicode() -> dict[int, str]:
    """The GPT-2 byte-level alphabet: 256 printable characters, one per byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {byte: chr(code) for byte, code in zip(printable, codes, strict=True)}


def _write_bpe_files(out_dir: Path, vocab: dict[str, int]) -> Path:
    """Write `vocab.json` and an empty-merges `merges.txt` (every byte is its own token)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(vocab))
    (out_dir / "merges.txt").write_text("#version: 0.2\n")
    return out_dir


def build_tiny_clip_tokenizer(work_dir: Path) -> CLIPTokenizer:
    """Build a byte-level CLIP tokenizer (514 tokens) from files written into `work_dir`.

    Args:
        work_dir: scratch folder for `vocab.json` / `merges.txt`.

    Returns:
        A CLIPTokenizer with `model_max_length` 77.
    """
    chars = list(_byte_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer.from_pretrained(_write_bpe_files(work_dir, vocab), model_max_length=TINY_MAX_TEXT_TOKENS)


def build_tiny_roberta_tokenizer(work_dir: Path) -> RobertaTokenizer:
    """Build a byte-level RoBERTa tokenizer (261 tokens), the CLAP text tokenizer's format.

    Args:
        work_dir: scratch folder for `vocab.json` / `merges.txt`.

    Returns:
        A RobertaTokenizer with `model_max_length` 77.
    """
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for char in _byte_to_unicode().values():
        vocab[char] = len(vocab)
    vocab["<mask>"] = len(vocab)
    return RobertaTokenizer.from_pretrained(_write_bpe_files(work_dir, vocab), model_max_length=TINY_MAX_TEXT_TOKENS)


def build_sd_scheduler() -> DDIMScheduler:
    """The SD-style DDIM scheduler (steps_offset=1 as in the real SD configs)."""
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


def _build_image_vae(in_channels: int = 3) -> AutoencoderKL:
    """Two-level KL autoencoder: spatial factor 2, 4 latent channels."""
    return AutoencoderKL(
        block_out_channels=(8, 8),
        in_channels=in_channels,
        out_channels=in_channels,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=2,
        sample_size=32,
    )


def _build_clip_text_encoder(hidden_dim: int, tokenizer: CLIPTokenizer) -> CLIPTextModel:
    """CLIP text transformer whose last hidden state (77, hidden_dim) is the SD / ZeroScope conditioning."""
    config = CLIPTextConfig(
        hidden_size=hidden_dim,
        intermediate_size=2 * hidden_dim,
        num_attention_heads=next(h for h in (4, 2, 1) if hidden_dim % h == 0),
        num_hidden_layers=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=TINY_MAX_TEXT_TOKENS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def _build_clip_conditioned_parts(
    cross_attention_dim: int, work_dir: Path, unet_class: type[ModelMixin], **unet_kwargs: Any
) -> dict[str, Any]:
    """The components SD and ZeroScope share: VAE, CLIP text encoder + tokenizer, DDIM scheduler and a small UNet.

    Args:
        cross_attention_dim: CLIP hidden size = UNet cross-attention width.
        work_dir: scratch folder for the tokenizer files.
        unet_class: `UNet2DConditionModel` (SD) or `UNet3DConditionModel` (ZeroScope).
        **unet_kwargs: the UNet's block types and attention head size.

    Returns:
        Pipeline constructor arguments `vae`, `text_encoder`, `tokenizer`, `unet`, `scheduler`.
    """
    tokenizer = build_tiny_clip_tokenizer(work_dir / "clip_tokenizer")
    unet = unet_class(
        **_TINY_UNET_SIZES,
        sample_size=16,
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=2,
        **unet_kwargs,
    )
    # Components draw from the global RNG in this order, so it fixes which weights a seed gives.
    return {
        "vae": _build_image_vae(),
        "text_encoder": _build_clip_text_encoder(cross_attention_dim, tokenizer),
        "tokenizer": tokenizer,
        "unet": unet,
        "scheduler": build_sd_scheduler(),
    }


def build_tiny_sd_pipeline(image_dim: int, work_dir: Path) -> StableDiffusionPipeline:
    """Build a StableDiffusionPipeline conditioned on (77, image_dim); default output 32x32.

    Args:
        image_dim: CLIP hidden size = UNet cross-attention width (real SD-1.5: 768, SD-2: 1024).
        work_dir: scratch folder for the tokenizer files.

    Returns:
        The pipeline, without safety checker.
    """
    parts = _build_clip_conditioned_parts(
        image_dim,
        work_dir,
        UNet2DConditionModel,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=4,
    )
    return StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def build_tiny_zeroscope_pipeline(video_dim: int, work_dir: Path) -> TextToVideoSDPipeline:
    """Build a TextToVideoSDPipeline (ZeroScope format) conditioned on (77, video_dim); default 32x32 frames.

    Args:
        video_dim: CLIP hidden size = 3-D UNet cross-attention width (real ZeroScope: 1024).
        work_dir: scratch folder for the tokenizer files.

    Returns:
        The pipeline.
    """
    parts = _build_clip_conditioned_parts(
        video_dim,
        work_dir,
        UNet3DConditionModel,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        attention_head_dim=2,
    )
    return TextToVideoSDPipeline(**parts)


def build_tiny_audioldm_pipeline(audio_dim: int, work_dir: Path) -> AudioLDMPipeline:
    """Build an AudioLDMPipeline conditioned on a CLAP vector of width audio_dim (UNet `class_labels`).

    Mel frames are 10 ms (vocoder upsampling 160 at 16 kHz) and the VAE halves both mel axes, so any
    `audio_length_in_s` >= 0.02 s works; 1 s is 100 mel frames -> a (50, 8) latent.

    Args:
        audio_dim: CLAP projection width (real AudioLDM: 512).
        work_dir: scratch folder for the tokenizer files.

    Returns:
        The pipeline.
    """
    tokenizer = build_tiny_roberta_tokenizer(work_dir / "roberta_tokenizer")
    text_encoder = ClapTextModelWithProjection(
        ClapTextConfig(
            hidden_size=16,
            intermediate_size=32,
            num_attention_heads=2,
            num_hidden_layers=1,
            vocab_size=len(tokenizer),
            projection_dim=audio_dim,
            max_position_embeddings=TINY_MAX_TEXT_TOKENS + 2,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    unet = UNet2DConditionModel(
        **_TINY_UNET_SIZES,
        sample_size=TINY_NUM_MEL_BINS,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        # No text cross-attention in AudioLDM: these blocks attend to themselves, so context width = channels.
        cross_attention_dim=(8, 16),
        norm_num_groups=8,
        class_embed_type="simple_projection",
        projection_class_embeddings_input_dim=audio_dim,
        class_embeddings_concat=True,
    )
    vocoder = SpeechT5HifiGan(
        SpeechT5HifiGanConfig(
            model_in_dim=TINY_NUM_MEL_BINS,
            sampling_rate=16000,
            upsample_initial_channel=16,
            upsample_rates=list(TINY_VOCODER_UPSAMPLE_RATES),
            upsample_kernel_sizes=[2 * r for r in TINY_VOCODER_UPSAMPLE_RATES],
            resblock_kernel_sizes=[3],
            resblock_dilation_sizes=[[1, 3]],
            normalize_before=False,
            # The default init (std 0.01) gives ~1e-7 waveforms at this width; 0.2 gives audible-range output.
            initializer_range=0.2,
        )
    )
    return AudioLDMPipeline(
        vae=_build_image_vae(in_channels=1),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=build_sd_scheduler(),
        vocoder=vocoder,
    )


def _store_tokenizer_as_bpe_files(tokenizer_dir: Path, work_dir: Path) -> None:
    """Swap the saved `tokenizer.json` for `vocab.json` + `merges.txt`, the layout of the real hub folders."""
    (tokenizer_dir / "tokenizer.json").unlink(missing_ok=True)
    (source_dir,) = [d for d in work_dir.iterdir() if (d / "vocab.json").is_file()]
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(source_dir / name, tokenizer_dir / name)


def write_tiny_decoders(
    out_dir: Path, image_dim: int, video_dim: int, audio_dim: int, seed: int = 0
) -> dict[Modality, Path]:
    """Write the three tiny pipeline folders (`save_pretrained` format) under `out_dir`.

    Args:
        out_dir: parent folder; gets `sd/`, `zeroscope/` and `audioldm/`.
        image_dim: SD conditioning width (configs/tiny.yaml: 32).
        video_dim: ZeroScope conditioning width (configs/tiny.yaml: 24).
        audio_dim: AudioLDM CLAP width (configs/tiny.yaml: 16).
        seed: seed of the random weights (the global RNG state is left untouched).

    Returns:
        The folder of each modality's pipeline.
    """
    out_dir = Path(out_dir)
    builders = {
        Modality.IMAGE: lambda work: build_tiny_sd_pipeline(image_dim, work),
        Modality.VIDEO: lambda work: build_tiny_zeroscope_pipeline(video_dim, work),
        Modality.AUDIO: lambda work: build_tiny_audioldm_pipeline(audio_dim, work),
    }
    paths: dict[Modality, Path] = {}
    with torch.random.fork_rng(devices=[]), tempfile.TemporaryDirectory() as work:
        torch.manual_seed(seed)
        for modality, build in builders.items():
            pipeline_dir = out_dir / PIPELINE_DIR_NAMES[modality]
            work_dir = Path(work) / modality.value
            build(work_dir).save_pretrained(pipeline_dir, safe_serialization=True)
            _store_tokenizer_as_bpe_files(pipeline_dir / "tokenizer", work_dir)
            paths[modality] = pipeline_dir
    logger.info("wrote tiny decoders to %s", out_dir)
    return paths
