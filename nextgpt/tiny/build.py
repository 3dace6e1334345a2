"""Write the whole tiny checkpoint tree that `configs/tiny.yaml` points at.

Layout under the root (the same formats as the real checkpoints):
    llm/                          HF LLaMA folder with a locally trained sentencepiece tokenizer.model
    imagebind/imagebind_tiny.pth  ImageBind state dict with the official key layout
    decoders/{sd,zeroscope,audioldm}/  diffusers pipeline folders (model_index.json, unet/, vae/, ...)
    metrics/                      FID Inception .pth, CLIP folder, PANNs CNN14 .pth (nextgpt.tiny.metric_models)

    build_tiny_checkpoints(Path("checkpoints/tiny"), load_config("configs/tiny.yaml"))
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from nextgpt.config import Config

logger = logging.getLogger(__name__)

LLM_SUBDIR = "llm"
IMAGEBIND_FILE = "imagebind/imagebind_tiny.pth"
METRICS_SUBDIR = "metrics"
DECODER_SUBDIRS = {"image": "decoders/sd", "video": "decoders/zeroscope", "audio": "decoders/audioldm"}


def tiny_path_overrides(root: Path) -> list[str]:
    """Config overrides that point every checkpoint path of configs/tiny.yaml into `root`.

    Args:
        root: a folder written by `build_tiny_checkpoints`.

    Returns:
        `key=value` strings for `load_config(..., overrides=...)`.
    """
    root = Path(root)
    overrides = [
        f"model.llm.model_path={root / LLM_SUBDIR}",
        f"model.encoder.checkpoint_path={root / IMAGEBIND_FILE}",
    ]
    overrides += [f"model.decoders.{m}.pipeline_path={root / sub}" for m, sub in DECODER_SUBDIRS.items()]
    return overrides


def build_tiny_checkpoints(root: Path, cfg: Config, seed: int = 0, pretrain: bool = True) -> Path:
    """Write the tiny LLM, ImageBind file and the three decoder pipelines under `root`.

    Sizes come from `cfg` (configs/tiny.yaml), so the files always match the config that will load them. By
    default the LLM, ImageBind and the decoders' text encoders are then briefly pretrained on the synthetic world
    (`nextgpt.tiny.pretrain`, `nextgpt.tiny.pretrain_encoder`, `nextgpt.tiny.pretrain_text_encoders`), so that stage 1
    has something to align and the stage-2 caption embeddings tell the captions apart; the UNets, VAEs and vocoder
    stay random.

    Args:
        root: output folder (created).
        cfg: the tiny config (encoder sizes, output-projector widths = decoder conditioning widths).
        seed: random seed of every weight and of the pretraining.
        pretrain: False keeps every weight random (faster, for tests of formats only).

    Returns:
        `root`.
    """
    from nextgpt.tiny.decoders import write_tiny_decoders
    from nextgpt.tiny.imagebind import write_tiny_imagebind
    from nextgpt.tiny.llm import write_tiny_llm
    from nextgpt.tiny.metric_models import write_tiny_metric_models
    from nextgpt.tiny.pretrain import build_world_conversations, pretrain_tiny_llm
    from nextgpt.tiny.pretrain_encoder import pretrain_tiny_imagebind
    from nextgpt.tiny.pretrain_text_encoders import pretrain_tiny_text_encoders

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    write_tiny_llm(root / LLM_SUBDIR, seed=seed)
    write_tiny_imagebind(root / IMAGEBIND_FILE, cfg.model.encoder, seed=seed)
    if pretrain:
        pretrain_tiny_imagebind(root / IMAGEBIND_FILE, cfg.model.encoder, seed=seed)
        pretrain_tiny_llm(root / LLM_SUBDIR, build_world_conversations(seed=seed), seed=seed)
    widths = cfg.model.output_projectors
    written = write_tiny_decoders(
        root / "decoders",
        image_dim=widths.image.out_dim,
        video_dim=widths.video.out_dim,
        audio_dim=widths.audio.out_dim,
        seed=seed,
    )
    for modality, path in written.items():
        expected = root / DECODER_SUBDIRS[modality.value]
        assert Path(path) == expected, f"tiny {modality.value} decoder written to {path}, expected {expected}"
    if pretrain:
        pretrain_tiny_text_encoders(root / "decoders", seed=seed)
    write_tiny_metric_models(root / METRICS_SUBDIR, seed=seed)
    logger.info("tiny checkpoints written to %s in %.1f s", root, time.perf_counter() - start)
    return root
