"""Frozen evaluation protocols: one typed config per benchmark (split, sample count, seed, resolution, guidance, steps,
prompt, metric models, the paper's numbers), read from `configs/eval/<task>.yaml` (tiny world: `configs/eval/tiny/`).

The dataclasses are the single source of truth; the YAML files only fill them in (unknown keys fail with the closest
name). Paths (benchmark file, media folder, metric models) may be overridden per run with `key=value`; every value a
run used is written into its eval card, so two numbers are comparable exactly when their protocols are equal.

    protocol = load_protocol("coco_t2i")                               # configs/eval/coco_t2i.yaml
    protocol = load_protocol("coco_t2i", Path("configs/eval/tiny"), ["num_samples=8"])
    protocol.generation.guidance_scale, protocol.paper                  # 7.5, {"FID": 11.18}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from nextgpt.config_loader import (
    SHIPPED_CONFIG_DIR,
    ConfigError,
    from_dict,
    merge_dicts,
    parse_override,
    read_yaml_chain,
)

TaskKind = Literal["caption", "text_to_image", "text_to_video", "text_to_audio", "switching"]
TASK_NAMES = (
    "coco_caption",
    "msrvtt_caption",
    "audiocaps_caption",
    "coco_t2i",
    "msrvtt_t2v",
    "audiocaps_t2a",
    "switching",
)
PROTOCOL_DIR = SHIPPED_CONFIG_DIR / "eval"


@dataclass
class GenerationProtocol:
    """Decoder and text-decoding settings of a generation task (None: the checkpoint's own decoder setting).

    Attributes:
        num_inference_steps: denoising steps.
        guidance_scale: classifier-free guidance.
        height: output pixels (image, video).
        width: output pixels (image, video).
        num_frames: frames per video.
        audio_seconds: clip length.
        max_new_tokens: reply length limit of the LLM.
    """

    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    audio_seconds: float | None = None
    max_new_tokens: int = 64


@dataclass
class MetricModelPaths:
    """Local metric-model files (never downloaded; a missing one stops the run naming the file's source).

    Attributes:
        inception: pytorch-fid FID Inception state dict (`pt_inception-2015-12-05-6726825d.pth`).
        clip: Hugging Face CLIP folder (CLIP score, CLIPSIM).
        audio_classifier: PANNs CNN14 16 kHz checkpoint (FD, KL, IS).
        audio_sample_rate: the classifier's input rate (not stored in its file).
        audio_hop_size: the classifier's STFT hop (not stored in its file).
    """

    inception: Path = Path("checkpoints/metrics/pt_inception-2015-12-05-6726825d.pth")
    clip: Path = Path("checkpoints/metrics/clip-vit-large-patch14")
    audio_classifier: Path = Path("checkpoints/metrics/Cnn14_16k_mAP=0.438.pth")
    audio_sample_rate: int = 16000
    audio_hop_size: int = 160


@dataclass
class SwitchingProtocol:
    """Catalog datasets of the switching task (held-out instruction and caption->media entries).

    Attributes:
        catalog_path: dataset catalog holding the entries below (None: the checkpoint's `data.catalog_path`).
        generation_requests: per output modality, text -> X requests (T2M format).
        text_requests: requests answered with text only.
        alignment: per output modality, caption -> media records with the decoders' caption embeddings.
    """

    catalog_path: Path | None = None
    generation_requests: dict[str, str] = field(default_factory=dict)
    text_requests: list[str] = field(default_factory=list)
    alignment: dict[str, str] = field(default_factory=dict)


@dataclass
class EvalProtocol:
    """One benchmark's frozen protocol.

    Attributes:
        task: what is generated and how it is scored.
        modality: the medium read (caption tasks) or generated (generation tasks).
        benchmark: the benchmark's name in the card ("COCO Karpathy test").
        split: the split evaluated.
        annotation_path: benchmark file: a JSON list of {"id", "media", "captions": [...]}.
        media_dir: folder the records' "media" paths are read inside (never outside).
        num_samples: records evaluated (the first ones of the file, in order); 0 = all.
        seed: seed of text sampling and of each sample's diffusion noise (sample k uses seed + k).
        prompt: the user message; "{caption}" is replaced by the record's first caption (generation tasks); the
            media placeholder ("<image>", "<video>", "<audio>") marks the input (caption tasks).
        generation: decoder and decoding settings.
        metric_models: where the metric models are.
        switching: the switching task's datasets.
        paper: the paper's numbers for this benchmark, printed beside ours (metric -> value).
        paper_source: where those numbers are reported.
        grid_size: samples shown in the card's grid image.
    """

    task: TaskKind = "caption"
    modality: Literal["image", "video", "audio"] = "image"
    benchmark: str = ""
    split: str = "test"
    annotation_path: Path = Path("data/eval/benchmark.json")
    media_dir: Path = Path("data/eval")
    num_samples: int = 0
    seed: int = 0
    prompt: str = ""
    generation: GenerationProtocol = field(default_factory=GenerationProtocol)
    metric_models: MetricModelPaths = field(default_factory=MetricModelPaths)
    switching: SwitchingProtocol = field(default_factory=SwitchingProtocol)
    paper: dict[str, float] = field(default_factory=dict)
    paper_source: str = ""
    grid_size: int = 8

    def __post_init__(self) -> None:
        if self.num_samples < 0:
            raise ConfigError(f"num_samples must be >= 0 (0 = all), got {self.num_samples}")
        if self.task in ("text_to_image", "text_to_video", "text_to_audio") and "{caption}" not in self.prompt:
            raise ConfigError(f"prompt of a {self.task} task must contain {{caption}}, got {self.prompt!r}")
        if self.task == "caption" and f"<{self.modality}>" not in self.prompt:
            raise ConfigError(
                f"prompt of a {self.modality} caption task must hold <{self.modality}>, got {self.prompt!r}"
            )


def protocol_file(name: str, protocol_dir: Path | None = None) -> Path:
    """`<protocol_dir>/<name>.yaml` (default: the shipped configs/eval/).

    Raises:
        ConfigError: unknown task name or missing file.
    """
    if name not in TASK_NAMES:
        raise ConfigError(f"unknown evaluation task '{name}'; choose from {', '.join(TASK_NAMES)}")
    path = Path(protocol_dir or PROTOCOL_DIR) / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"protocol file not found: {path}; pass --protocol-dir with a folder holding {name}.yaml")
    return path


def load_protocol(name: str, protocol_dir: Path | None = None, overrides: list[str] | None = None) -> EvalProtocol:
    """Load a task's protocol: dataclass defaults <- YAML (may `inherit:`) <- `key=value` overrides.

    Raises:
        ConfigError: unknown task, unknown key, wrong type or a failed check (each naming the key).
    """
    data = read_yaml_chain(protocol_file(name, protocol_dir))
    for text in overrides or []:
        data = merge_dicts(data, parse_override(text))
    return from_dict(EvalProtocol, data)
