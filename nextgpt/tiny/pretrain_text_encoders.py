"""Briefly pretrain the tiny decoders' text encoders so that the world's captions get clearly different embeddings.

The caption embeddings of the decoders' text encoders are the stage-2 targets. A random tiny CLIP (SD, ZeroScope) or
CLAP (AudioLDM) text encoder maps every caption of the synthetic world to nearly the same vector (flattened cosine up
to 0.99; 0.997 on average for the four tones), so no output projector could be told which caption to reproduce, and
caption retrieval stays near chance. The real encoders do separate "a red circle on the left" from "a blue square at the
top". Here each text encoder is trained for a few seconds on every caption of its modality: throwaway cosine
classifiers, one per attribute (colour, shape, position / direction, pitch, rhythm), read the caption embedding exactly
as the pipeline computes it (flattened last hidden state of CLIP; normalised `text_embeds` of CLAP). Each attribute
value then owns a direction of the embedding, so captions that differ in any attribute are far apart and an unseen
combination lands where its attributes point. Only the `text_encoder/` folder of each pipeline is rewritten, in the
same format; the UNets, VAEs and vocoder stay as they were.

    result = pretrain_tiny_text_encoders(Path("checkpoints/tiny/decoders"))
    result.mean_cosine[Modality.IMAGE]   # mean cosine between different captions: about 0.1 (random: 0.83)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from torch import nn

from nextgpt.constants import MODALITIES, Modality
from nextgpt.decoders.inputs import tokenize_captions
from nextgpt.tiny import data as world
from nextgpt.tiny.decoders import PIPELINE_DIR_NAMES
from nextgpt.tiny.pretrain_encoder import (
    ATTRIBUTE_VALUES,
    enumerate_world_attrs,
    mean_cosine_between_captions,
    one_torch_thread,
    warmup_cosine,
)

logger = logging.getLogger(__name__)

_LOGIT_SCALE = 16.0
"""Cosine logits in [-1, 1] times this: large enough for confident heads, small enough to keep the classes apart."""


@dataclass
class TextEncoderPretrainResult:
    """How the text-encoder pretraining ended.

    Attributes:
        accuracy: per modality, the fraction of captions whose attributes the throwaway heads all get right.
        mean_cosine: per modality, the mean cosine between the embeddings of different captions afterwards.
        seconds: wall time.
    """

    accuracy: dict[Modality, float]
    mean_cosine: dict[Modality, float]
    seconds: float


def embed_captions(pipeline: DiffusionPipeline, modality: Modality, captions: list[str]) -> torch.Tensor:
    """Caption embeddings with gradients, computed as the decoders' `encode_captions` computes them.

    Args:
        pipeline: a loaded SD / ZeroScope (CLIP) or AudioLDM (CLAP) pipeline.
        modality: whose pipeline.
        captions: N captions.

    Returns:
        (N, F): the flattened CLIP last hidden state (N, 77 * D), or the L2-normalised CLAP `text_embeds` (N, D).
    """
    tokens = tokenize_captions(pipeline.tokenizer, captions, modality)
    if modality == Modality.AUDIO:
        text_embeds = pipeline.text_encoder(tokens.input_ids, attention_mask=tokens.attention_mask).text_embeds
        return nn.functional.normalize(text_embeds, dim=-1)  # (N, D)
    # SD and ZeroScope pass no attention mask to their CLIP text encoders (see `encode_clip_captions`).
    hidden = pipeline.text_encoder(tokens.input_ids)[0]  # (N, 77, D)
    return hidden.flatten(1)  # (N, 77, D) -> (N, 77 * D)


class AttributeHeads(nn.Module):
    """One cosine classifier per attribute: logits = scale * cos(embedding, learned class direction).

    Args:
        modality: whose attributes (`ATTRIBUTE_VALUES`).
        embed_dim: width of the flattened caption embedding.
        generator: seeds the initial class directions.
    """

    def __init__(self, modality: Modality, embed_dim: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.names = list(ATTRIBUTE_VALUES[modality])
        self.directions = nn.ParameterList(
            nn.Parameter(torch.randn(len(ATTRIBUTE_VALUES[modality][n]), embed_dim, generator=generator))
            for n in self.names
        )

    def forward(self, embeds: torch.Tensor) -> list[torch.Tensor]:
        """(N, F) embeddings -> per attribute, (N, num_values) logits."""
        unit = nn.functional.normalize(embeds, dim=-1)  # (N, F)
        return [_LOGIT_SCALE * unit @ nn.functional.normalize(d, dim=-1).T for d in self.directions]


def _attribute_labels(modality: Modality, attrs: list[dict[str, str]]) -> list[torch.Tensor]:
    values = ATTRIBUTE_VALUES[modality]
    return [torch.tensor([values[name].index(a[name]) for a in attrs]) for name in values]


def _train_text_encoder(
    pipeline: DiffusionPipeline, modality: Modality, num_steps: int, lr: float, seed: int
) -> tuple[float, float]:
    """AdamW on the text encoder and throwaway heads over every caption of the modality; (accuracy, mean cosine)."""
    attrs = enumerate_world_attrs(modality)
    captions = [world.caption_of(modality, a) for a in attrs]
    labels = _attribute_labels(modality, attrs)
    encoder = pipeline.text_encoder
    encoder.train().requires_grad_(True)
    with torch.no_grad():
        embed_dim = embed_captions(pipeline, modality, captions[:1]).shape[-1]
    heads = AttributeHeads(modality, embed_dim, torch.Generator().manual_seed(seed))
    optimizer = torch.optim.AdamW([*encoder.parameters(), *heads.parameters()], lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, num_steps))
    for _ in range(num_steps):
        logits = heads(embed_captions(pipeline, modality, captions))
        loss = sum(nn.functional.cross_entropy(lg, lb) for lg, lb in zip(logits, labels, strict=True))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    encoder.eval().requires_grad_(False)
    with torch.no_grad():
        embeds = embed_captions(pipeline, modality, captions)
        correct = torch.stack([lg.argmax(-1) == lb for lg, lb in zip(heads(embeds), labels, strict=True)]).all(0)
    return float(correct.float().mean()), mean_cosine_between_captions(embeds, captions)


def pretrain_tiny_text_encoders(
    decoders_dir: Path, num_steps: int = 150, lr: float = 6e-3, seed: int = 0
) -> TextEncoderPretrainResult:
    """Train the text encoder of each tiny pipeline under `decoders_dir` on the world's captions, in place.

    Args:
        decoders_dir: the folder written by `write_tiny_decoders` (`sd/`, `zeroscope/`, `audioldm/`).
        num_steps: optimizer steps per text encoder (each step sees every caption of the modality).
        lr: peak AdamW learning rate (warmup, then cosine decay).
        seed: seed of the throwaway heads and of any dropout.

    Returns:
        The heads' attribute accuracy and the mean cosine between different captions, per modality.

    Raises:
        ValueError: `num_steps` below 1.
        FileNotFoundError: a pipeline folder is missing.
    """
    if num_steps < 1:
        raise ValueError(f"pretrain_tiny_text_encoders needs num_steps >= 1, got {num_steps}")
    start = time.perf_counter()
    accuracy, mean_cosine = {}, {}
    with one_torch_thread(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for modality in MODALITIES:
            pipeline_dir = Path(decoders_dir) / PIPELINE_DIR_NAMES[modality]
            if not (pipeline_dir / "model_index.json").is_file():
                raise FileNotFoundError(f"{pipeline_dir} is not a pipeline folder; write it with write_tiny_decoders")
            pipeline = DiffusionPipeline.from_pretrained(pipeline_dir, local_files_only=True)
            accuracy[modality], mean_cosine[modality] = _train_text_encoder(pipeline, modality, num_steps, lr, seed)
            pipeline.text_encoder.save_pretrained(pipeline_dir / "text_encoder", safe_serialization=True)
    result = TextEncoderPretrainResult(accuracy, mean_cosine, time.perf_counter() - start)
    logger.info(
        "pretrained tiny text encoders for %d steps in %.1f s: %s",
        num_steps,
        result.seconds,
        ", ".join(f"{m.value} accuracy {accuracy[m]:.2f}, cosine {mean_cosine[m]:.2f}" for m in MODALITIES),
    )
    return result
