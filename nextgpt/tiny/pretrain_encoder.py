"""Briefly pretrain the tiny ImageBind so that its embeddings tell the synthetic world's media apart.

With random weights, every synthetic image (and every video, every tone) gets nearly the same embedding, so no input
projector could recover what a caption should say. Here the vision tower (images and videos) and the audio tower are
trained for a few seconds on every attribute combination of the world (colour/shape/position, colour/shape/direction,
pitch/rhythm), rendered by `nextgpt.tiny.data`'s writers and read through the inference preprocessing
(`load_media`): a throwaway linear head per attribute classifies the unit-length embedding. The trained towers are
written back into the same file, keeping every key of the official layout (the unused towers' keys included).

    write_tiny_imagebind(path, cfg.model.encoder)
    result = pretrain_tiny_imagebind(path, cfg.model.encoder)   # result.accuracy[Modality.IMAGE] -> 1.0
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import random
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from nextgpt.config import ImageBindConfig
from nextgpt.constants import MODALITIES, Modality
from nextgpt.encoders.imagebind import TOWER_OF, ImageBindEncoder, read_checkpoint, split_unused_keys
from nextgpt.encoders.transforms import load_media
from nextgpt.tiny import data as world

logger = logging.getLogger(__name__)

ATTRIBUTE_VALUES: dict[Modality, dict[str, tuple[str, ...]]] = {
    Modality.IMAGE: {
        "colour": tuple(sorted(world.COLOURS)),
        "shape": world.SHAPES,
        "position": tuple(sorted(world.POSITIONS)),
    },
    Modality.VIDEO: {
        "colour": tuple(sorted(world.COLOURS)),
        "shape": world.SHAPES,
        "direction": tuple(sorted(world.DIRECTIONS)),
    },
    Modality.AUDIO: {"pitch": tuple(sorted(world.PITCHES)), "rhythm": world.RHYTHMS},
}
"""Every attribute of each modality of the synthetic world and its possible values."""
_EXTENSIONS = {Modality.IMAGE: "png", Modality.VIDEO: "mp4", Modality.AUDIO: "wav"}
_WRITERS = {Modality.IMAGE: world.write_image, Modality.VIDEO: world.write_video, Modality.AUDIO: world.write_audio}
_LOGIT_SCALE = 10.0
"""Unit-length embeddings give logits in [-|w|, |w|]; scaling them lets the heads reach confident predictions fast."""
VIEW_EQUAL_ATOL = 1e-3
"""Views this close count as equal. The official audio preprocessing centres clips in place on one shared waveform,
so the repeated clips of a file one clip long subtract the float32 residue (~1e-9) of an already removed mean and
differ from the first clip by up to ~1e-4 in normalised log-mel; distinct clips or crops differ by far more than 0.1."""


@dataclass
class WorldMedia:
    """Encoder inputs of every attribute combination of one modality.

    Attributes:
        modality: image, video or audio.
        attrs: one attribute dict per item.
        inputs: per item, the `load_media` output (image (3, S, S); video (V, 3, 2, S, S); audio (V, 1, M, F)),
            with views that are all equal (up to `VIEW_EQUAL_ATOL`) stored once: the world's media are no longer than one ImageBind clip and
            its frames are square, so every clip and crop is the same view and V is 1 (saving ~1 GB of copies).
    """

    modality: Modality
    attrs: list[dict[str, str]]
    inputs: list[torch.Tensor]

    def captions(self) -> list[str]:
        """Caption of each item (`nextgpt.tiny.data.caption_of`)."""
        return [world.caption_of(self.modality, a) for a in self.attrs]

    def labels(self) -> dict[str, torch.Tensor]:
        """Per attribute, the (N,) index of each item's value in `ATTRIBUTE_VALUES`."""
        values = ATTRIBUTE_VALUES[self.modality]
        return {name: torch.tensor([options.index(a[name]) for a in self.attrs]) for name, options in values.items()}


@dataclass
class EncoderPretrainResult:
    """How the encoder pretraining ended.

    Attributes:
        loss: per modality, the attribute cross-entropy of the last step (summed over attributes).
        accuracy: per modality, the fraction of items whose attributes the throwaway heads all get right.
        seconds: wall time of rendering and training.
    """

    loss: dict[Modality, float]
    accuracy: dict[Modality, float]
    seconds: float


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run the block with one intra-op torch thread, restoring the previous count afterwards.

    Two threads make the tiny pretraining about 1.5x faster on an idle 2-core machine, but on a busy one the
    oversubscribed threads make it up to ten times slower; one thread also makes the pretrained weights independent
    of the machine's core count.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def enumerate_world_attrs(modality: Modality) -> list[dict[str, str]]:
    """Every attribute combination of a modality, in a fixed order.

    Args:
        modality: image, video or audio.

    Returns:
        E.g. 48 dicts for images (4 colours x 3 shapes x 4 positions).
    """
    values = ATTRIBUTE_VALUES[modality]
    return [dict(zip(values, combo, strict=True)) for combo in itertools.product(*values.values())]


def render_world_media(
    cfg: ImageBindConfig, modalities: tuple[Modality, ...] = MODALITIES
) -> dict[Modality, WorldMedia]:
    """Render every attribute combination into a temporary folder and read it with the inference preprocessing.

    Args:
        cfg: `model.encoder` (preprocessing sizes).
        modalities: which modalities to render.

    Returns:
        The encoder inputs per modality.
    """
    rendered: dict[Modality, WorldMedia] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for modality in modalities:
            attrs_list = enumerate_world_attrs(modality)
            inputs = []
            for index, attrs in enumerate(attrs_list):
                path = Path(tmp) / f"{modality.value}_{index:03d}.{_EXTENSIONS[modality]}"
                _WRITERS[modality](path, attrs)
                views = load_media(modality, path, cfg)
                inputs.append(views if modality == Modality.IMAGE else _collapse_equal_views(views))
            rendered[modality] = WorldMedia(modality, attrs_list, inputs)
    return rendered


def _collapse_equal_views(views: torch.Tensor) -> torch.Tensor:
    """(V, ...) -> (1, ...) when all views are equal up to `VIEW_EQUAL_ATOL` (the encoder's mean over views then
    changes only by float noise), else as is."""
    if all(torch.allclose(view, views[0], atol=VIEW_EQUAL_ATOL, rtol=0) for view in views[1:]):
        return views[:1]
    return views


def embed_views(encoder: ImageBindEncoder, modality: Modality, views: torch.Tensor) -> torch.Tensor:
    """Encode single views with gradients (the encoder's own forward is frozen and averages views).

    Args:
        encoder: the ImageBind towers.
        modality: which tower to use.
        views: image (B, 3, S, S), video clip (B, 3, 2, S, S) or audio clip (B, 1, M, F).

    Returns:
        (B, out_dim) unit-length embeddings, exactly as `encode_clips` computes each view.
    """
    tower = TOWER_OF[modality]
    tokens = encoder.modality_preprocessors[tower](views)
    pooled = encoder.modality_heads[tower](encoder.modality_trunks[tower](tokens))
    return nn.functional.normalize(pooled, dim=-1)


def warmup_cosine(step: int, num_steps: int, warmup_steps: int = 10) -> float:
    """Learning-rate factor: linear warmup, then cosine decay to zero at `num_steps`.

    Args:
        step: the current step (0-based).
        num_steps: total steps.
        warmup_steps: steps of the linear warmup.

    Returns:
        A factor in [0, 1].
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(num_steps - warmup_steps, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _sample_views(media: WorldMedia, indices: list[int], rng: random.Random) -> torch.Tensor:
    """One view per chosen item: the image itself, or a random clip/crop of a video or audio item."""
    if media.modality == Modality.IMAGE:
        return torch.stack([media.inputs[i] for i in indices])
    return torch.stack([media.inputs[i][rng.randrange(media.inputs[i].shape[0])] for i in indices])


def _head_name(modality: Modality, attribute: str) -> str:
    # Images and videos share the vision tower and their colour/shape heads: one direction per colour, whatever the medium.
    return f"{TOWER_OF[modality]}_{attribute}"


def _build_heads(out_dim: int) -> nn.ModuleDict:
    heads = {
        _head_name(modality, name): nn.Linear(out_dim, len(options))
        for modality, values in ATTRIBUTE_VALUES.items()
        for name, options in values.items()
    }
    return nn.ModuleDict(heads)


def _attribute_loss(
    heads: nn.ModuleDict, modality: Modality, embeds: torch.Tensor, labels: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy over the modality's attributes, and which items got every attribute right."""
    loss, correct = embeds.new_zeros(()), torch.ones(embeds.shape[0], dtype=torch.bool)
    for name, target in labels.items():
        logits = heads[_head_name(modality, name)](_LOGIT_SCALE * embeds)
        loss = loss + nn.functional.cross_entropy(logits, target)
        correct &= logits.argmax(dim=-1) == target
    return loss, correct


def _load_towers(path: Path, cfg: ImageBindConfig) -> tuple[ImageBindEncoder, dict[str, torch.Tensor]]:
    state = read_checkpoint(path)
    used, _ = split_unused_keys(state)
    encoder = ImageBindEncoder(cfg)
    encoder.load_state_dict(used, strict=True)
    encoder.requires_grad_(True)
    # The vision patch projection keeps its random values: its weight gradient costs about a third of every step,
    # and a random projection of the patches already keeps colours, shapes and motions apart.
    encoder.modality_preprocessors["vision"].rgbt_stem.requires_grad_(False)
    return encoder, state


def pretrain_tiny_imagebind(
    path: Path,
    cfg: ImageBindConfig,
    num_steps: int = 200,
    batch_size: int = 16,
    lr: float = 2e-3,
    seed: int = 0,
) -> EncoderPretrainResult:
    """Train the vision and audio towers of a tiny ImageBind file to separate the world's attributes, in place.

    Args:
        path: a tiny ImageBind `.pth` (official key layout, e.g. from `write_tiny_imagebind`); rewritten.
        cfg: `model.encoder` sizes matching the file.
        num_steps: optimizer steps (each sees up to `batch_size` items of every modality).
        batch_size: items per modality per step.
        lr: AdamW learning rate of the towers and the throwaway heads.
        seed: seed of the heads, the batches and the chosen views.

    Returns:
        The last step's losses and the heads' accuracy over all items.

    Raises:
        ValueError: `num_steps` or `batch_size` below 1.
        FileNotFoundError: `path` does not exist.
    """
    if num_steps < 1 or batch_size < 1:
        raise ValueError(
            f"pretrain_tiny_imagebind needs num_steps >= 1 and batch_size >= 1, got {num_steps}, {batch_size}"
        )
    start = time.perf_counter()
    with one_torch_thread(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder, state = _load_towers(Path(path), cfg)
        media = render_world_media(cfg)
        heads = _build_heads(cfg.out_embed_dim)
        losses, accuracy = _train_towers(encoder, heads, media, num_steps, batch_size, lr, random.Random(seed))
    trained = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
    torch.save({**state, **trained}, path)
    seconds = time.perf_counter() - start
    logger.info(
        "pretrained tiny ImageBind for %d steps in %.1f s: attribute accuracy %s",
        num_steps,
        seconds,
        ", ".join(f"{m.value} {accuracy[m]:.2f}" for m in MODALITIES),
    )
    return EncoderPretrainResult(loss=losses, accuracy=accuracy, seconds=seconds)


def _train_towers(
    encoder: ImageBindEncoder,
    heads: nn.ModuleDict,
    media: dict[Modality, WorldMedia],
    num_steps: int,
    batch_size: int,
    lr: float,
    rng: random.Random,
) -> tuple[dict[Modality, float], dict[Modality, float]]:
    """AdamW on towers + heads; every step sums the attribute losses of a batch of every modality."""
    labels = {m: media[m].labels() for m in MODALITIES}
    optimizer = torch.optim.AdamW([*encoder.parameters(), *heads.parameters()], lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, num_steps))
    losses: dict[Modality, float] = {}
    for _ in range(num_steps):
        total = torch.zeros(())
        for modality in MODALITIES:
            num_items = len(media[modality].attrs)
            chosen = rng.sample(range(num_items), min(batch_size, num_items))
            embeds = embed_views(encoder, modality, _sample_views(media[modality], chosen, rng))
            loss, _ = _attribute_loss(heads, modality, embeds, {k: v[chosen] for k, v in labels[modality].items()})
            losses[modality] = float(loss.detach())
            total = total + loss
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        schedule.step()
    return losses, _evaluate(encoder, heads, media, labels, rng)


@torch.no_grad()
def _evaluate(
    encoder: ImageBindEncoder,
    heads: nn.ModuleDict,
    media: dict[Modality, WorldMedia],
    labels: dict[Modality, dict[str, torch.Tensor]],
    rng: random.Random,
) -> dict[Modality, float]:
    accuracy = {}
    for modality in MODALITIES:
        items = list(range(len(media[modality].attrs)))
        embeds = embed_views(encoder, modality, _sample_views(media[modality], items, rng))
        _, correct = _attribute_loss(heads, modality, embeds, labels[modality])
        accuracy[modality] = float(correct.float().mean())
    return accuracy


def mean_cosine_between_captions(embeddings: torch.Tensor, captions: list[str]) -> float:
    """Mean cosine similarity over all pairs of items whose captions differ.

    Args:
        embeddings: (N, D) one vector per item.
        captions: N captions.

    Returns:
        The mean over pairs (i, j), i != j, with different captions.

    Raises:
        ValueError: fewer than two distinct captions, or a length mismatch.
    """
    if len(captions) != embeddings.shape[0] or len(set(captions)) < 2:
        raise ValueError(
            f"need one caption per embedding and at least two distinct captions, got {len(captions)} captions "
            f"({len(set(captions))} distinct) for {embeddings.shape[0]} embeddings"
        )
    unit = nn.functional.normalize(embeddings.float(), dim=-1)
    cosine = unit @ unit.T  # (N, D) x (D, N) -> (N, N)
    different = torch.tensor([[a != b for b in captions] for a in captions])
    return float(cosine[different].mean())
