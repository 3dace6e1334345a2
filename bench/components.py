"""Shaped components with random weights: Vicuna-7B NextGPT, ImageBind-Huge, SD-1.5, ZeroScope and AudioLDM-L.

Speed and memory do not depend on weight values, so random weights at the real shapes measure the real cost. Every
builder takes a `Shapes` (`FULL` for the GPU run, `SMOKE` for the CPU check) and builds directly on the target device.

    shapes = FULL
    tokenizer = build_tokenizer(work_dir, shapes)
    model = build_nextgpt(shapes, tokenizer, "cuda", lora=True, with_encoder=False)
    unet = build_sd_unet(shapes, "cuda", torch.float16)
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nextgpt.config import DecoderConfig, ImageBindConfig, LLMConfig, LoRAConfig, ModelConfig, OutputProjectorsConfig

VICUNA_7B: dict[str, int] = dict(
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    max_position_embeddings=4096,
    vocab_size=32000,
)
"""LLaMA-7B / Vicuna-7B v1.5 shapes (base vocabulary 32000, before the signal tokens)."""

SD15_UNET: dict[str, Any] = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
"""Stable Diffusion 1.5 UNet: the `UNet2DConditionModel` defaults (320/640/1280/1280, 2 layers a block) at 768-d
CLIP-L conditioning, 64x64 latents for 512x512 pixels."""

ZEROSCOPE_UNET: dict[str, Any] = dict(cross_attention_dim=1024, attention_head_dim=64)
"""ZeroScope v2 576w / ModelScope T2V 3-D UNet: the `UNet3DConditionModel` defaults (OpenCLIP-H 1024-d context)."""

AUDIOLDM_L_UNET: dict[str, Any] = dict(
    sample_size=128,
    in_channels=8,
    out_channels=8,
    block_out_channels=(256, 512, 768, 1280),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=64,
    cross_attention_dim=(256, 512, 768, 1280),
    class_embed_type="simple_projection",
    projection_class_embeddings_input_dim=512,
    class_embeddings_concat=True,
)
"""AudioLDM-L (l-full) as diffusers converts it: model_channels 256 x (1, 2, 3, 5), attention at downsampling
2/4/8 with 64 head channels, 8 latent channels, CLAP (512) conditioning through the class embedding (FiLM, concat);
the transformer blocks attend to themselves (no text cross-attention)."""


@dataclass(frozen=True)
class Shapes:
    """Every size the bench builds. `FULL` is the paper system; `SMOKE` shrinks widths and depths for the CPU check."""

    name: str
    llm: dict[str, int]
    encoder: ImageBindConfig
    output_projectors: OutputProjectorsConfig
    sd_unet: dict[str, Any]
    sd_vae_channels: tuple[int, ...]
    sd_image_size: int
    clip_text: dict[str, int]
    zeroscope_unet: dict[str, Any]
    video_text: dict[str, int]
    video_size: tuple[int, int, int]
    """(frames, height, width) in pixels."""
    audioldm_unet: dict[str, Any]
    audio_vae_channels: tuple[int, ...]
    clap_text: dict[str, int]
    vocoder: dict[str, Any]
    audio_seconds: float
    lora: LoRAConfig = field(default_factory=lambda: LoRAConfig(enabled=True, r=32, alpha=32, dropout=0.1))
    signal_tokens: dict[str, int] = field(default_factory=lambda: dict(num_image=4, num_video=24, num_audio=8))

    @property
    def latent_video(self) -> tuple[int, int, int]:
        """(frames, height / 8, width / 8) of the 3-D UNet latents."""
        frames, height, width = self.video_size
        return frames, height // 8, width // 8


FULL = Shapes(
    name="full",
    llm=VICUNA_7B,
    encoder=ImageBindConfig(dtype="bfloat16"),
    output_projectors=OutputProjectorsConfig(),
    sd_unet=SD15_UNET,
    sd_vae_channels=(128, 256, 512, 512),
    sd_image_size=512,
    clip_text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
    zeroscope_unet=ZEROSCOPE_UNET,
    video_text=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16),
    video_size=(24, 320, 576),
    audioldm_unet=AUDIOLDM_L_UNET,
    audio_vae_channels=(128, 256, 512),
    clap_text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
    vocoder=dict(
        model_in_dim=64,
        upsample_initial_channel=1024,
        upsample_rates=[5, 4, 2, 2, 2],
        upsample_kernel_sizes=[16, 16, 8, 4, 4],
    ),
    audio_seconds=5.0,
)

_SMOKE_PROJECTOR = dict(hidden_dim=32, num_heads=2, num_encoder_layers=1, num_decoder_layers=1, ff_dim=64)
SMOKE = Shapes(
    name="smoke",
    llm=dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        vocab_size=1000,
    ),
    encoder=ImageBindConfig(
        out_embed_dim=32,
        vision_embed_dim=32,
        vision_num_blocks=2,
        vision_num_heads=2,
        audio_embed_dim=32,
        audio_num_blocks=2,
        audio_num_heads=2,
        image_size=56,
        dtype="float32",
    ),
    output_projectors=OutputProjectorsConfig(
        **{
            m: dataclasses.replace(getattr(OutputProjectorsConfig(), m), out_dim=d, **_SMOKE_PROJECTOR)
            for m, d in (("image", 32), ("video", 24), ("audio", 16))
        }
    ),
    sd_unet=dict(
        sample_size=8,
        cross_attention_dim=32,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=4,
    ),
    sd_vae_channels=(8, 8),
    sd_image_size=16,
    clip_text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
    zeroscope_unet=dict(
        cross_attention_dim=24,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        attention_head_dim=2,
    ),
    video_text=dict(hidden_size=24, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2),
    video_size=(3, 16, 24),
    audioldm_unet=dict(
        sample_size=8,
        in_channels=8,
        out_channels=8,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=2,
        cross_attention_dim=(8, 16),
        class_embed_type="simple_projection",
        projection_class_embeddings_input_dim=16,
        class_embeddings_concat=True,
    ),
    audio_vae_channels=(8, 8, 8),
    clap_text=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2),
    vocoder=dict(
        model_in_dim=16, upsample_initial_channel=16, upsample_rates=[8, 5, 4], upsample_kernel_sizes=[16, 10, 8]
    ),
    audio_seconds=0.32,
    lora=LoRAConfig(enabled=True, r=4, alpha=8, dropout=0.1),
)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Build modules directly in `dtype` (no float32 copy of a 7B model)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def model_config(
    shapes: Shapes, lora: bool, gradient_checkpointing: bool = False, max_length: int = 4096
) -> ModelConfig:
    """The `model` section a user would write for this system (what `build_nextgpt` reads, minus the paths)."""
    dtype = "bfloat16" if shapes is FULL else "float32"
    return ModelConfig(
        encoder=shapes.encoder,
        llm=LLMConfig(
            dtype=dtype,
            max_length=max_length,
            gradient_checkpointing=gradient_checkpointing,
        ),
        lora=dataclasses.replace(shapes.lora, enabled=lora),
        output_projectors=shapes.output_projectors,
    )


TOKENIZER_PIECES = 700
"""Pieces of the tiny sentencepiece model: the Vicuna v1 opening (BOS, system prompt, "USER:") is then 32 tokens,
near Vicuna's 38, so prefix reuse saves what it would save on the real tokenizer."""


def build_tokenizer(work_dir: Path, shapes: Shapes):
    """The tiny sentencepiece tokenizer padded to the shape's base vocabulary, with the signal tokens added.

    Token ids, not token strings, drive the cost, so a padded tiny vocabulary stands in for Vicuna's.
    """
    from transformers import AutoTokenizer

    from nextgpt.config import SignalTokenConfig
    from nextgpt.llm.tokenizer import load_tokenizer
    from nextgpt.tiny.llm import write_tiny_llm

    folder = Path(work_dir) / f"tokenizer-{shapes.name}"
    if not (folder / "tokenizer_config.json").is_file():
        write_tiny_llm(folder, vocab_size=TOKENIZER_PIECES)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        vocab = shapes.llm["vocab_size"]
        tokenizer.add_tokens([f"<pad_{i:05d}>" for i in range(vocab - len(tokenizer))])
        tokenizer.save_pretrained(folder)
    return load_tokenizer(folder, SignalTokenConfig(**shapes.signal_tokens))


def llama_config(shape: dict[str, int], **extra: Any):
    """A `LlamaConfig` at `shape` with Vicuna's norm epsilon, untied head and the tokenizer's special ids."""
    from transformers import LlamaConfig

    return LlamaConfig(
        **shape, rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0, **extra
    )


def write_vicuna_shaped_llm(out_dir: Path, shape: dict[str, int], device: str | torch.device) -> Path:
    """An HF LLaMA folder at `shape` (e.g. `VICUNA_7B`) with random bf16 weights and the tokenizer of
    `build_tokenizer` (tiny sentencepiece padded to the shape's vocabulary), read by the project's own loaders.

    Kept when `out_dir` exists (it is written in a staging folder and renamed when complete). `device` is where the
    random weights are drawn (a 7B model in bf16 is 13.5 GB).
    """
    import shutil

    from transformers import AutoTokenizer, LlamaForCausalLM

    from nextgpt.tiny.llm import write_tiny_llm
    from nextgpt.utils.folders import replace_folder

    out_dir = Path(out_dir)
    if out_dir.is_dir():
        return out_dir
    staging = out_dir.with_name(f".{out_dir.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    write_tiny_llm(staging, vocab_size=TOKENIZER_PIECES)
    tokenizer = AutoTokenizer.from_pretrained(staging)
    tokenizer.add_tokens([f"<pad_{i:05d}>" for i in range(shape["vocab_size"] - len(tokenizer))])
    tokenizer.save_pretrained(staging)
    with default_dtype(torch.bfloat16), torch.device(device):
        model = LlamaForCausalLM(llama_config(shape, torch_dtype="bfloat16"))
    for tiny_weights in staging.glob("model*.safetensors"):
        tiny_weights.unlink()
    model.save_pretrained(staging)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    replace_folder(staging, out_dir)
    return out_dir


def build_llm(shapes: Shapes, tokenizer, device: str | torch.device, dtype: torch.dtype, gradient_checkpointing: bool):
    """A random LLaMA at the shape's sizes, frozen, with trainable signal-token rows (as `load_llm` returns it)."""
    from transformers import LlamaForCausalLM

    from nextgpt.llm.backbone import _enable_checkpointing
    from nextgpt.llm.token_rows import attach_token_rows

    config = llama_config(shapes.llm, attn_implementation="sdpa")
    with default_dtype(dtype), torch.device(device):
        llm = LlamaForCausalLM(config)
    llm.requires_grad_(False)
    attach_token_rows(llm, shapes.llm["vocab_size"], len(tokenizer))
    if gradient_checkpointing:
        _enable_checkpointing(llm)
    return llm.eval()


def build_encoder(shapes: Shapes, device: str | torch.device):
    """ImageBind (vision + audio towers) at the shape's sizes, random, frozen, in the config's dtype."""
    from nextgpt.encoders.imagebind import ImageBindEncoder

    dtype = getattr(torch, shapes.encoder.dtype)
    with default_dtype(dtype), torch.device(device):
        encoder = ImageBindEncoder(shapes.encoder)
    return encoder.to(device=device, dtype=dtype)


def build_nextgpt(
    shapes: Shapes,
    tokenizer,
    device: str | torch.device,
    *,
    lora: bool,
    with_encoder: bool,
    gradient_checkpointing: bool = False,
    trainable: tuple[str, ...] = ("input_projector", "token_rows"),
):
    """The project's NextGPT around random shaped parts: real projectors, token rows, optional peft LoRA.

    Args:
        shapes: sizes.
        tokenizer: from `build_tokenizer`.
        device: where everything lives.
        lora: wrap the LLM with peft LoRA (`shapes.lora`).
        with_encoder: build ImageBind (batches with raw media) or not (batches with `media_features`).
        gradient_checkpointing: `model.llm.gradient_checkpointing`.
        trainable: `train.trainable` groups.

    Returns:
        The model in train mode, every parameter in the LLM dtype.
    """
    from nextgpt.constants import MODALITIES
    from nextgpt.llm.lora import apply_lora
    from nextgpt.llm.tokenizer import signal_token_ids
    from nextgpt.model import NextGPT
    from nextgpt.projectors.input_projector import build_input_projector
    from nextgpt.projectors.output_projector import OutputProjector
    from nextgpt.training.stages import apply_trainable_groups

    cfg = model_config(shapes, lora, gradient_checkpointing)
    dtype = getattr(torch, cfg.llm.dtype)
    llm = build_llm(shapes, tokenizer, device, dtype, gradient_checkpointing)
    if lora:
        llm = apply_lora(llm, cfg.lora)
    encoder = build_encoder(shapes, device) if with_encoder else None
    with default_dtype(dtype), torch.device(device):
        llm_dim = shapes.llm["hidden_size"]
        input_projector = build_input_projector(cfg.input_projector, cfg.encoder.out_embed_dim, llm_dim)
        output_projectors = nn.ModuleDict(
            {m.value: OutputProjector(getattr(cfg.output_projectors, m.value), llm_dim) for m in MODALITIES}
        )
    model = NextGPT(
        cfg, tokenizer, llm, encoder, input_projector, output_projectors, signal_token_ids(tokenizer, cfg.signal_tokens)
    )
    apply_trainable_groups(model, trainable)
    return model.train()


def count_llm_parameters(shapes: Shapes) -> dict[str, int]:
    """Parameters of the LLaMA shape: total, input embedding, and the rest (what MFU counts)."""
    s = shapes.llm
    d, f, layers, vocab = s["hidden_size"], s["intermediate_size"], s["num_hidden_layers"], s["vocab_size"]
    per_layer = 4 * d * d + 3 * d * f + 2 * d  # attention q,k,v,o + gated MLP + two RMSNorms
    embedding = vocab * d
    non_embedding = layers * per_layer + d + vocab * d  # + final norm + LM head
    return {"total": embedding + non_embedding, "embedding": embedding, "non_embedding": non_embedding}


# ---- diffusion components -------------------------------------------------------------------------------------------


def build_sd_unet(shapes: Shapes, device: str | torch.device, dtype: torch.dtype):
    """SD-1.5-shaped `UNet2DConditionModel`, random, eval mode."""
    from diffusers import UNet2DConditionModel

    with default_dtype(dtype), torch.device(device):
        unet = UNet2DConditionModel(**shapes.sd_unet)
    return unet.to(device=device, dtype=dtype).eval().requires_grad_(False)


def build_zeroscope_unet(shapes: Shapes, device: str | torch.device, dtype: torch.dtype):
    """ZeroScope-shaped `UNet3DConditionModel`, random, eval mode."""
    from diffusers import UNet3DConditionModel

    with default_dtype(dtype), torch.device(device):
        unet = UNet3DConditionModel(**shapes.zeroscope_unet)
    return unet.to(device=device, dtype=dtype).eval().requires_grad_(False)


def build_audioldm_unet(shapes: Shapes, device: str | torch.device, dtype: torch.dtype):
    """AudioLDM-L-shaped `UNet2DConditionModel` (class-embedding conditioning), random, eval mode."""
    from diffusers import UNet2DConditionModel

    with default_dtype(dtype), torch.device(device):
        unet = UNet2DConditionModel(**shapes.audioldm_unet)
    return unet.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _clip_text_encoder(sizes: dict[str, int], tokenizer, hidden_act: str):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        **sizes,
        vocab_size=49408,
        max_position_embeddings=77,
        hidden_act=hidden_act,
        projection_dim=sizes["hidden_size"],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def _image_vae(channels: tuple[int, ...], in_channels: int = 3, latent_channels: int = 4, sample_size: int = 512):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=in_channels,
        out_channels=in_channels,
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels),
        block_out_channels=channels,
        layers_per_block=2 if channels[-1] >= 64 else 1,
        latent_channels=latent_channels,
        norm_num_groups=32 if channels[0] >= 32 else 4,
        sample_size=sample_size,
    )


def build_sd_pipeline(shapes: Shapes, work_dir: Path, dtype: torch.dtype):
    """SD-1.5-shaped `StableDiffusionPipeline` on CPU (UNet, VAE, CLIP-L text encoder, PNDM scheduler)."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    from nextgpt.tiny.decoders import build_tiny_clip_tokenizer

    tokenizer = build_tiny_clip_tokenizer(Path(work_dir) / "clip_tokenizer")
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1
    )
    with default_dtype(torch.float32):  # CPU init in float32 (half-precision init on CPU is slow), cast after
        parts = dict(
            unet=build_sd_unet(shapes, "cpu", torch.float32),
            vae=_image_vae(shapes.sd_vae_channels, sample_size=shapes.sd_image_size),
            text_encoder=_clip_text_encoder(shapes.clip_text, tokenizer, "quick_gelu"),
        )
    pipeline = StableDiffusionPipeline(
        **parts,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return pipeline.to(dtype=dtype)


def build_zeroscope_pipeline(shapes: Shapes, work_dir: Path, dtype: torch.dtype):
    """ZeroScope-shaped `TextToVideoSDPipeline` on CPU (3-D UNet, SD VAE, OpenCLIP-H text encoder, DDIM)."""
    from diffusers import TextToVideoSDPipeline

    from nextgpt.tiny.decoders import build_sd_scheduler, build_tiny_clip_tokenizer

    tokenizer = build_tiny_clip_tokenizer(Path(work_dir) / "clip_tokenizer_video")
    scheduler = build_sd_scheduler()
    with default_dtype(torch.float32):
        parts = dict(
            unet=build_zeroscope_unet(shapes, "cpu", torch.float32),
            vae=_image_vae(shapes.sd_vae_channels, sample_size=shapes.sd_image_size),
            text_encoder=_clip_text_encoder(shapes.video_text, tokenizer, "gelu"),
        )
    return TextToVideoSDPipeline(**parts, tokenizer=tokenizer, scheduler=scheduler).to(dtype=dtype)


def build_audioldm_pipeline(shapes: Shapes, work_dir: Path, dtype: torch.dtype):
    """AudioLDM-L-shaped `AudioLDMPipeline` on CPU (UNet, 8-channel mel VAE, CLAP text encoder, HiFi-GAN, DDIM)."""
    from diffusers import AudioLDMPipeline, DDIMScheduler
    from transformers import ClapTextConfig, ClapTextModelWithProjection, SpeechT5HifiGan, SpeechT5HifiGanConfig

    from nextgpt.tiny.decoders import build_tiny_roberta_tokenizer

    tokenizer = build_tiny_roberta_tokenizer(Path(work_dir) / "roberta_tokenizer")
    projection_dim = shapes.audioldm_unet["projection_class_embeddings_input_dim"]
    with default_dtype(torch.float32):
        text_encoder = ClapTextModelWithProjection(
            ClapTextConfig(**shapes.clap_text, projection_dim=projection_dim, pad_token_id=tokenizer.pad_token_id)
        )
        vocoder_cfg = dict(shapes.vocoder)
        vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(**vocoder_cfg, sampling_rate=16000, normalize_before=False))
        unet = build_audioldm_unet(shapes, "cpu", torch.float32)
        vae = _image_vae(shapes.audio_vae_channels, in_channels=1, latent_channels=8, sample_size=256)
    scheduler = DDIMScheduler(
        beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False
    )
    pipeline = AudioLDMPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler, vocoder=vocoder
    )
    return pipeline.to(dtype=dtype)


def build_decoder(modality, shapes: Shapes, work_dir: Path, dtype: str, **decoder_cfg: Any):
    """One project `Decoder` (image / video / audio wrapper) around a shaped random pipeline, on CPU."""
    from nextgpt.constants import Modality
    from nextgpt.decoders.audio import AudioDecoder
    from nextgpt.decoders.image import ImageDecoder
    from nextgpt.decoders.video import VideoDecoder

    torch_dtype = getattr(torch, dtype)
    modality = Modality(modality)
    frames, height, width = shapes.video_size
    if modality is Modality.IMAGE:
        cfg = DecoderConfig(dtype=dtype, **decoder_cfg)
        return ImageDecoder(build_sd_pipeline(shapes, work_dir, torch_dtype), cfg)
    if modality is Modality.VIDEO:
        cfg = DecoderConfig(dtype=dtype, height=height, width=width, num_frames=frames, **decoder_cfg)
        return VideoDecoder(build_zeroscope_pipeline(shapes, work_dir, torch_dtype), cfg)
    cfg = DecoderConfig(dtype=dtype, audio_seconds=shapes.audio_seconds, guidance_scale=2.5, **decoder_cfg)
    return AudioDecoder(build_audioldm_pipeline(shapes, work_dir, torch_dtype), cfg)
