"""Typed configuration: the dataclasses below are the single source of truth for every knob.

YAML files only override these defaults; `key.sub=value` strings override the YAML. Unknown keys and
wrong types fail naming the key (and the closest valid one); cross-field checks live in `__post_init__`.

    cfg = load_config("configs/tiny.yaml", overrides=["model.llm.max_length=256"])
    cfg.model.output_projectors.image.out_dim  # 768 with the paper decoder set
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from nextgpt.config_loader import ConfigError, load_config, save_config, to_dict  # noqa: F401  (re-exported)
from nextgpt.constants import BACKBONE_GROUPS, GROUPS


@dataclass
class ImageBindConfig:
    """Frozen ImageBind encoder. Defaults are ImageBind-Huge; tiny configs shrink widths and depths only."""

    checkpoint_path: Path | None = None
    """Path to `imagebind_huge.pth` (the official file) or a tiny file with the same key layout."""
    out_embed_dim: int = 1024
    """Width of the shared embedding space (the vector handed to the input projector)."""
    vision_embed_dim: int = 1280
    vision_num_blocks: int = 32
    vision_num_heads: int = 16
    vision_patch_size: int = 14
    """Spatial kernel of the Conv3d stem; its temporal kernel is 2 (images are repeated to 2 frames)."""
    audio_embed_dim: int = 768
    audio_num_blocks: int = 12
    audio_num_heads: int = 12
    audio_patch_size: int = 16
    audio_patch_stride: int = 10
    image_size: int = 224
    """Side of the square crop fed to the vision tower (official: 224)."""
    audio_num_mel_bins: int = 128
    audio_target_frames: int = 204
    """Fbank frames per 2 s clip after pad/cut (official: 204)."""
    audio_sample_rate: int = 16000
    audio_num_clips: int = 3
    audio_clip_seconds: float = 2.0
    audio_mean: float = -4.268
    audio_std: float = 9.138
    audio_channel_mode: Literal["official", "average"] = "official"
    """How audio channels and per-clip centring are handled. `official`: exactly ImageBind's (and NExT-GPT's)
    `data.py`: all channels are kept, each clip's mean over all its channels is subtracted in place from the shared
    waveform (so a later overlapping clip sees the already shifted samples), and the fbank reads the first channel
    only. Checkpoints trained on official features expect these inputs. `average`: channels averaged to mono and each
    clip centred on a copy (the previous behaviour): stereo files contribute both channels and clips are independent
    of each other, but the features differ from the official ones on stereo files and in the overlap of clips."""
    video_num_clips: int = 5
    video_clip_seconds: float = 2.0
    video_frames_per_clip: int = 2
    video_num_crops: int = 3
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype the frozen tower runs in."""


@dataclass
class InputProjectorConfig:
    """Maps one 1024-d ImageBind vector to LLM token(s)."""

    type: Literal["linear", "mlp", "group"] = "linear"
    """`linear`: 1 token (paper v1 / legacy); `mlp`: Linear-GELU-Linear, 1 token; `group`: GroupViT-style, 8 tokens."""
    mlp_hidden_dim: int = 4096
    group_width: int = 512
    group_num_tokens: tuple[int, ...] = (64, 8)
    """Learned group tokens of the grouping stages; the last number is the tokens per media item."""
    group_depths: tuple[int, ...] = (6, 3, 3)
    group_num_heads: int = 8
    group_mlp_ratio: float = 4.0


@dataclass
class LLMConfig:
    """The language model: any local HF LLaMA-family folder with its tokenizer."""

    model_path: Path | None = None
    """Local HF folder (config.json, weights, tokenizer.model / tokenizer.json)."""
    RETIRED_KEYS: ClassVar[dict[str, tuple[object, str]]] = {
        "attn_implementation": (
            "sdpa",
            "training attends sample by sample over the batch's flattened row (PyTorch's flash "
            "varlen kernel on CUDA in bf16/fp16, per-sample sdpa elsewhere; nextgpt.llm.varlen), inference uses sdpa",
        )
    }
    """Removed key -> (its old default, what happens now); read by `config_loader.from_dict`."""

    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    quantization: Literal["none", "4bit", "8bit"] = "none"
    """Load the frozen decoder layers' linear weights quantized with bitsandbytes (`nextgpt.llm.quantization`).
    `4bit`: NF4 with double-quantized block scales, computing in `dtype` (QLoRA): about a quarter of the bf16 weight
    memory (Vicuna-7B's 13.5 GB -> about 4 GB), at a weight rounding error of up to 15% of each 64-weight block's
    largest value and a slower matmul (each weight is dequantized per use). `8bit`: LLM.int8 with fp16 outlier
    columns: about half the memory, closer to bf16, matmuls in float16. The embeddings and the LM head (frozen base
    rows + trainable signal-token rows) stay in `dtype`; LoRA trains on top of the quantized weights (with gradient
    checkpointing and compiled layers too). 4-bit under `train.precision=bf16` needs `dtype: bfloat16` (checked by the
    preflight). Merging LoRA reloads the base unquantized (`nextgpt.training.merge`). Preset:
    `configs/presets/qlora_24gb.yaml`."""
    max_length: int = 512
    """Longest training sequence in tokens (media rows included)."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward pass: about a third more compute per step for a
    fraction of the activation memory (stage 3 on a 24 GB GPU: `configs/presets/gpu_24gb.yaml`). Incompatible with
    `train.prefix_reuse` (the recomputed layers would not see the cached prefix)."""
    compile_layers: bool = False
    """Training: `torch.compile` each decoder layer (dynamic shapes): fewer kernel launches and fused elementwise work
    per step, same numbers up to rounding; costs about a minute of compilation in the first steps, so it is off in the
    defaults (CPU tests, tiny runs) and on in the shipped GPU stage configs. Inference keeps eager layers (decoding
    compiles its own step)."""
    template: str = "vicuna_v1"
    """Chat template (`nextgpt.llm.templates`): vicuna_v1, vicuna_v0 (the legacy release), llama_2_chat, plain. Saved
    with each checkpoint; data, training and inference all render conversations with it."""
    cudnn_attention: bool = False
    """Let PyTorch's sdpa pick its cuDNN kernels on CUDA. Off by default: cuDNN builds a kernel for every new
    sequence length, which costs up to a second per step when lengths vary (docs/benchmarks.md); the flash and
    memory-efficient kernels are used instead. Process-wide (torch.backends.cuda.enable_cudnn_sdp)."""

    def __post_init__(self) -> None:
        from nextgpt.llm.templates import get_template

        get_template(self.template)  # an unknown name fails when the config loads, listing the valid ones


@dataclass
class SignalTokenConfig:
    """How many signal tokens each modality emits (paper: 4 image / 24 video / 8 audio)."""

    num_image: int = 4
    num_video: int = 24
    num_audio: int = 8

    style: Literal["nextgpt", "legacy"] = "nextgpt"
    """Token strings: `nextgpt` = `<image_00>` … (the NEW code), `legacy` = `[IMG0]` … (the `7b_tiva_v0` release)."""
    span_separator: str | None = None
    """Text between consecutive signal tokens of a span. None: the n signal ids follow each other (n tokens). " ":
    the NEW code's spans, whose slow tokenizer put a `▁` id between neighbouring special tokens (2n-1 tokens, all
    fed to the output projector), needed to run checkpoints trained by that code."""

    def __post_init__(self) -> None:
        for name in ("num_image", "num_video", "num_audio"):
            if getattr(self, name) < 1:
                raise ConfigError(f"signal_tokens.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class LoRAConfig:
    """LoRA on the LLM (stage 3). Presets: paper r32/a32 on q,k,v,o; `all_linear` r128/a256."""

    enabled: bool = False
    r: int = 32
    alpha: int = 32
    dropout: float = 0.1
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class OutputProjectorConfig:
    """Transformer from signal-token hidden states to a decoder's conditioning (GILL-style)."""

    num_queries: int = 77
    """Learned queries = conditioning tokens produced (77 for SD / ZeroScope, 1 for AudioLDM)."""
    out_dim: int = 768
    """Conditioning width; must equal the decoder's text-encoder width (checked when the decoder loads)."""
    hidden_dim: int = 512
    num_heads: int = 4
    num_encoder_layers: int = 4
    num_decoder_layers: int = 4
    ff_dim: int = 2048
    dropout: float = 0.0


@dataclass
class OutputProjectorsConfig:
    """One output projector per modality; defaults are the paper decoder set (SD-1.5, ZeroScope, AudioLDM)."""

    image: OutputProjectorConfig = field(default_factory=lambda: OutputProjectorConfig(num_queries=77, out_dim=768))
    video: OutputProjectorConfig = field(default_factory=lambda: OutputProjectorConfig(num_queries=77, out_dim=1024))
    audio: OutputProjectorConfig = field(default_factory=lambda: OutputProjectorConfig(num_queries=1, out_dim=512))


@dataclass
class DecoderConfig:
    """One frozen diffusers pipeline, loaded from a local folder, driven by `prompt_embeds`."""

    pipeline_path: Path | None = None
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    """Classifier-free guidance; <= 1 disables it."""
    height: int | None = None
    """Output height in pixels, a multiple of 8 (the VAE's downsampling); None = the pipeline's default (image/video
    only)."""
    width: int | None = None
    num_frames: int = 16
    """Video only."""
    audio_seconds: float = 5.0
    """Audio only."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    channels_last: bool = False
    """Keep the UNet's (and VAE's) 4-D weights and activations in channels-last memory order (faster convs on GPU)."""
    fuse_qkv: bool = False
    """Fuse each attention block's q/k/v projections into one matmul (same numbers, fewer kernel launches)."""
    compile: bool = False
    """`torch.compile` the UNet once at load; the first call pays the compile time. Sampling only: the denoising
    loss runs the UNet eagerly (compiled input gradients were wrong on CPU)."""
    scheduler: Literal["default", "dpm_solver", "unipc", "euler"] = "default"
    """`default` keeps the pipeline's own scheduler; the others swap in a fewer-step solver built from its config
    (set `num_inference_steps` to match, e.g. 20-25). Never changed behind the user's back."""

    def __post_init__(self) -> None:
        # Checked here so a bad YAML value or override fails at load, not after the LLM has answered.
        key = "model.decoders.<modality>"
        if self.num_inference_steps < 1:
            raise ConfigError(f"{key}.num_inference_steps must be >= 1, got {self.num_inference_steps}")
        if not math.isfinite(self.guidance_scale) or self.guidance_scale < 0:
            raise ConfigError(f"{key}.guidance_scale must be a finite number >= 0, got {self.guidance_scale}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and (value <= 0 or value % 8):
                raise ConfigError(f"{key}.{name} must be a positive multiple of 8 (or null), got {value}")
        if self.num_frames < 1:
            raise ConfigError(f"{key}.num_frames must be >= 1, got {self.num_frames}")
        if not math.isfinite(self.audio_seconds) or self.audio_seconds <= 0:
            raise ConfigError(f"{key}.audio_seconds must be a finite number > 0, got {self.audio_seconds}")


@dataclass
class DecodersConfig:
    """The three decoders (paper set by default: SD-1.5, ZeroScope v2 576w, AudioLDM l-full)."""

    image: DecoderConfig = field(default_factory=DecoderConfig)
    video: DecoderConfig = field(
        default_factory=lambda: DecoderConfig(height=320, width=576, num_frames=16, guidance_scale=7.5)
    )
    audio: DecoderConfig = field(default_factory=lambda: DecoderConfig(guidance_scale=2.5, audio_seconds=5.0))


@dataclass
class LossConfig:
    """Weights of the loss terms (spec 1.11): total = ce + sum_m (l2_m * caption L2 + denoise_m * denoising)."""

    ce_weight: float = 1.0
    l2_weight: float = 1.0
    denoise_weight: float = 0.0
    """0 disables the denoising loss (it needs the decoder's UNet/VAE in memory)."""
    snr_gamma: float | None = 5.0
    """Min-SNR-gamma weighting of the denoising loss; None for plain MSE."""


@dataclass
class ModelConfig:
    """Everything that defines the network (and must match a checkpoint)."""

    encoder: ImageBindConfig = field(default_factory=ImageBindConfig)
    input_projector: InputProjectorConfig = field(default_factory=InputProjectorConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    signal_tokens: SignalTokenConfig = field(default_factory=SignalTokenConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    output_projectors: OutputProjectorsConfig = field(default_factory=OutputProjectorsConfig)
    decoders: DecodersConfig = field(default_factory=DecodersConfig)
    loss: LossConfig = field(default_factory=LossConfig)


@dataclass
class GenerationConfig:
    """Text sampling defaults for inference (spec 1.12; greedy when temperature is 0)."""

    max_new_tokens: int = 512
    temperature: float = 0.2
    top_p: float = 1.0
    seed: int = 0
    """Seeds text sampling and the decoders' initial noise (the k-th item of a modality uses seed + k)."""
    max_outputs_per_modality: int = 5
    """At most this many media items of one modality per reply (extra spans are reported and skipped)."""
    ignore_eos: bool = False
    """Decode `max_new_tokens` tokens whatever the model says (an end-of-reply token does not stop it): replies of a
    known length for load tests and benchmarks, as vLLM's `ignore_eos`. Off for answers people read."""
    compile_decode: bool | None = None
    """Compile the text decode step (`nextgpt.inference.fast_decode`; every reply decodes with its static KV cache).
    None: compile on CUDA (replayed as a CUDA graph), eager on CPU. Compiling (with autotuning) costs a first reply of
    about 100-130 s on a 7B model on an H200 (and again when a longer request grows the cache) for about 7x faster
    decoding after it (`docs/benchmarks.md`); the tokens are the same up to bf16 rounding."""

    RETIRED_KEYS: ClassVar[dict[str, tuple[object, str]]] = {
        "fast_decode": (
            False,
            "replies always decode with a static KV cache now (what it switched on); set generation.compile_decode "
            "(true, false, or null: compile on CUDA only) to choose whether the decode step is compiled",
        )
    }
    """Removed key -> (its old default, what happens now); read by `config_loader.from_dict`."""

    def __post_init__(self) -> None:
        # NaN passes every comparison, so finiteness is checked explicitly (a NaN temperature failed deep inside HF).
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ConfigError(f"generation.temperature must be a finite number >= 0, got {self.temperature}")
        if not (math.isfinite(self.top_p) and 0 < self.top_p <= 1):
            raise ConfigError(f"generation.top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"generation.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"generation.seed must be in [0, 2**63), got {self.seed}")
        if self.max_outputs_per_modality < 0:
            raise ConfigError(f"generation.max_outputs_per_modality must be >= 0, got {self.max_outputs_per_modality}")
        if not (self.compile_decode is None or isinstance(self.compile_decode, bool)):
            raise ConfigError(
                "generation.compile_decode must be true, false or null (compile on CUDA only), "
                f"got {self.compile_decode!r}"
            )


@dataclass
class DatasetEntryConfig:
    """One named dataset of the catalog (`configs/datasets.yaml`): its own annotation file and folders."""

    annotation_path: Path
    """JSON list of records in the official NExT-GPT formats (spec 3.2)."""
    kind: Literal["x_to_text", "text_to_x", "instruction", "tool"] = "instruction"
    """`tool`: MLLM-Tool (ToolMMBench) records (`image_path` / `video_path` / `audio_path`, the tool in the gpt turn;
    `nextgpt.data.tool_records`); the others: the official NExT-GPT formats."""
    image_dir: Path | None = None
    video_dir: Path | None = None
    audio_dir: Path | None = None
    caption_embed_dir: Path | None = None
    """Folder of `<name>.npy` caption embeddings (written by preprocess_embeddings.py) for generation targets."""


@dataclass
class DataConfig:
    """Which catalog datasets a run reads and how batches are formed."""

    catalog_path: Path = Path("configs/datasets.yaml")
    datasets: tuple[str, ...] = ()
    """Catalog names, e.g. [cc3m_enc, webvid_enc, audiocap_enc]."""
    sampler: Literal["random", "modality_blended", "length_grouped"] = "modality_blended"
    bad_sample_policy: Literal["skip", "error"] = "skip"
    """`skip`: a missing/corrupt media file or malformed record (a non-object entry of the annotation list included)
    is skipped, counted and logged, and an epoch without a single usable sample stops the run naming the datasets and
    folders; `error`: stop at the first bad sample."""
    num_workers: int = 0
    feature_cache_dir: Path | None = None
    """Folder of precomputed ImageBind features (preprocess_features.py); when set, the datasets read features
    instead of media files and the frozen encoder is not run (or loaded) during training."""
    tool_library_path: Path | None = None
    """The tool library JSON (`nextgpt.tools.library`) of a tool-use run: training counts gold tools missing from it,
    evaluation counts a named tool outside it as a hallucination, and inference runs the chosen tool from it."""
    packing: bool = True
    """Pack several samples into each row (up to model.llm.max_length) instead of one padded row each; attention never
    crosses a sample boundary, so the loss equals the padded one. Off only changes how much padding is computed."""

    def __post_init__(self) -> None:
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.num_workers}")


RESUME_ORDER_KEYS = (
    "seed",
    "train.micro_batch_size",
    "train.grad_accum_steps",
    "data.datasets",
    "data.sampler",
    "data.packing",
    "model.llm.max_length",
    "world_size",
    "dataset_sizes",
)
"""What fixes the data order of a run: a resume compares these with the checkpoint's `meta.json` and refuses a change
unless `train.allow_resume_changes` names the key. `world_size` is the number of processes, `dataset_sizes` the
number of records of each dataset (an annotation file edited between runs)."""


@dataclass
class TrainConfig:
    """One training stage: what trains, how long, how it is saved."""

    stage: int = 1
    trainable: tuple[str, ...] = ("input_projector", "token_rows")
    """Trainable groups: input_projector, output_projectors, lora, token_rows."""
    init_from: Path | None = None
    """Checkpoint folder of the previous stage (its trainable weights are loaded first; its files are checked against
    its manifest before any model is built)."""
    output_dir: Path = Path("runs/stage_1")
    """The run folder: step-*/ and final/ checkpoints, metrics.jsonl, and `.lock` (one trainer at a time)."""
    resume: bool = True
    """Continue from the newest intact checkpoint in output_dir (broken newer ones are skipped with a warning). A run
    whose final/ already holds the steps asked for is reported as finished and left untouched; with a larger
    max_steps / epochs it continues from final/ with its optimizer state. False starts over at step 0."""
    deepspeed_config: Path | None = Path("configs/deepspeed/zero2.json")
    precision: Literal["bf16", "fp32"] = "bf16"
    lr: float = 4e-4
    weight_decay: float = 0.0
    betas: tuple[float, ...] = (0.9, 0.95)
    warmup_ratio: float = 0.1
    schedule: Literal["cosine", "linear", "constant"] = "linear"
    epochs: int = 1
    max_steps: int | None = None
    """Stop after this many optimizer steps (None: run the epochs)."""
    micro_batch_size: int = 4
    grad_accum_steps: int = 1
    grad_clip: float = 1.0
    save_every: int = 500
    keep_last: int = 2
    log_every: int = 10
    tensorboard: bool = True
    fused_optimizer: bool = True
    """AdamW's fused kernel (one launch for every parameter) instead of its multi-tensor one; the same update up to
    rounding. Off only to compare with the multi-tensor kernel."""
    prefix_reuse: bool | None = None
    """Compute the conversation prefix every sample shares (system prompt and role tag) once, keep its KV cache, and
    run only the rest of each sample; the loss equals the plain one. Needs a frozen LLM (no `lora` in `trainable`)
    and no gradient checkpointing. None (default): on exactly when those hold (stages 1 and 2); true where they do
    not is refused when the config is built."""
    allow_resume_changes: tuple[str, ...] = ()
    """Keys whose change a resume accepts (e.g. [train.micro_batch_size, world_size]). A resume continues the data
    order of the interrupted run exactly, so by default it refuses a checkpoint written with another value of any key
    that fixes that order (micro batch size, grad accumulation, seed,
    datasets and their sizes, sampler, packing, max_length, world size: `RESUME_ORDER_KEYS`). A key listed here is accepted with a warning
    and the run continues from the same fraction of the epoch, in a different order than an uninterrupted run. A new
    number of processes with the micro batch size changed to keep processes x micro batch the same needs no entry: the
    global batches, and so the data order, are the same (the optimizer state is converted, `training.universal`)."""
    trust_checkpoint_pickles: bool = False
    """Let resume unpickle DeepSpeed state that needs classes outside the allow-list (`nextgpt.training.safe_load`).
    Off: the state is read with `torch.load(weights_only=True)`, which cannot run code; a file that needs more is
    refused. Turn on only for checkpoints you wrote yourself with a DeepSpeed setup the allow-list does not cover:
    unpickling runs whatever the file says."""

    def __post_init__(self) -> None:
        if self.stage not in (1, 2, 3):
            raise ConfigError(f"train.stage must be 1, 2 or 3, got {self.stage}")
        if not 0 <= self.warmup_ratio <= 1:
            raise ConfigError(f"train.warmup_ratio must be in [0, 1], got {self.warmup_ratio}")
        self._check_ranges()
        unknown_keys = [k for k in self.allow_resume_changes if k not in RESUME_ORDER_KEYS]
        if unknown_keys:
            raise ConfigError(
                f"train.allow_resume_changes has unknown keys {unknown_keys}; valid: {list(RESUME_ORDER_KEYS)}"
            )
        valid = set(GROUPS)
        unknown = set(self.trainable) - valid
        if unknown:
            raise ConfigError(f"train.trainable has unknown groups {sorted(unknown)}; valid: {sorted(valid)}")

    def _check_ranges(self) -> None:
        """Single-field limits, checked when the config loads: a bad value fails in a second, not after the model."""
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"train.lr must be a finite number > 0, got {self.lr}; e.g. train.lr=1e-4")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"train.weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if not (math.isfinite(self.grad_clip) and self.grad_clip >= 0):
            raise ConfigError(f"train.grad_clip must be a finite number >= 0 (0: no clipping), got {self.grad_clip}")
        if len(self.betas) != 2 or not all(math.isfinite(b) and 0 <= b < 1 for b in self.betas):
            raise ConfigError(f"train.betas must be two numbers in [0, 1), got {list(self.betas)}; e.g. [0.9, 0.95]")
        at_least_one = ("epochs", "micro_batch_size", "grad_accum_steps", "save_every", "keep_last", "log_every")
        for name in at_least_one:
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"train.max_steps must be >= 1 or null (run train.epochs), got {self.max_steps}")


@dataclass
class Config:
    """Root of the configuration tree (what `configs/*.yaml` describe)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 42

    def __post_init__(self) -> None:
        # Rules between options of different sections, checked once, when the config is built.
        train, llm = self.train, self.model.llm
        llm_groups = sorted({"lora", *BACKBONE_GROUPS} & set(train.trainable))
        frozen_llm = not llm_groups
        if "llm" in train.trainable and self.model.lora.enabled:
            raise ConfigError(
                "train.trainable includes llm (full fine-tuning of the backbone) and model.lora.enabled=true; set "
                "model.lora.enabled=false for a full fine-tune, or drop llm to train LoRA"
            )
        if train.prefix_reuse is None:
            train.prefix_reuse = frozen_llm and not llm.gradient_checkpointing
        elif train.prefix_reuse and not frozen_llm:
            raise ConfigError(
                f"train.prefix_reuse needs a frozen LLM but train.trainable includes {', '.join(llm_groups)}; set "
                "train.prefix_reuse=false (or leave it unset) for this stage"
            )
        elif train.prefix_reuse and llm.gradient_checkpointing:
            raise ConfigError(
                "train.prefix_reuse does not work with model.llm.gradient_checkpointing=true (recomputed layers would "
                "not see the cached prefix); set one of them to false"
            )
