"""Briefly pretrain the tiny LLM on the synthetic world so that it reads what sits in a media slot.

Stage 1 trains only the input projector in front of a frozen LLM, so the LLM must already turn whatever sits at a
media placeholder into the right caption words. A random LLM cannot, and one pretrained on text alone learns to
ignore the slot (which colour or pitch a caption names cannot be guessed from the text). Here the LLM learns from
conversations about media whose slot holds one vector that encodes the item's attributes: the sum of throwaway
learned attribute embeddings (one per attribute value, e.g. image/colour/red), spliced at the placeholder sentinel
with `splice_media`, mixed with text-only conversations (captions to write, media to generate). Every weight of the
LLM is trained; the throwaway embeddings are dropped, and stage 1 later learns to map ImageBind vectors to vectors the
LLM reads the same way. The LLM is saved back in place in the same HF format.

    conversations = build_world_conversations(seed=0)
    pretrain_tiny_llm(Path("checkpoints/tiny/llm"), conversations)
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from nextgpt.constants import IGNORE_INDEX, MODALITIES, Modality
from nextgpt.llm.conversation import Turn, build_training_example
from nextgpt.llm.splice import splice_media
from nextgpt.llm.templates import VICUNA_V1_SYSTEM
from nextgpt.losses import compute_lm_loss
from nextgpt.tiny import data as world
from nextgpt.tiny.pretrain_encoder import ATTRIBUTE_VALUES, enumerate_world_attrs, one_torch_thread, warmup_cosine

logger = logging.getLogger(__name__)

_MEDIA_QUESTIONS: dict[Modality, list[tuple[str, str]]] = {
    Modality.IMAGE: [("What colour is the shape?", "colour"), ("Where is the shape?", "position")],
    Modality.VIDEO: [("Which way does the shape move?", "direction")],
    Modality.AUDIO: [],
}
"""Attribute questions about a media item (the instruction-tuning records ask these) and the attribute answered."""
_KIND_WEIGHTS = {"caption": 0.55, "question": 0.15, "generate": 0.2, "write": 0.1}
"""Share of each conversation kind: caption a media item, answer a question about it, ask for media, write text."""


@dataclass
class WorldConversation:
    """A conversation about the synthetic world and the user-side media items of its placeholders.

    Attributes:
        turns: alternating user/assistant turns; user turns may hold `<image>`/`<video>`/`<audio>` placeholders.
        media: (modality, attributes) of each user-side item, in placeholder order.
        open_end: the EOS closing the answer is not learned. Set on media requests ("Sure, here it is."), where
            later stages put signal tokens instead: an LLM sure that the answer ends there would resist them.
    """

    turns: list[Turn]
    media: list[tuple[Modality, dict[str, str]]] = field(default_factory=list)
    open_end: bool = False


def _answer(attribute: str, attrs: dict[str, str]) -> str:
    if attribute == "position":
        return world.POSITION_WORDS[attrs["position"]]
    if attribute == "direction":
        return f"It moves {attrs['direction']}."
    return attrs[attribute]


def _build_conversation(kind: str, rng: random.Random) -> WorldConversation:
    """One conversation of `kind` ("caption", "question", "generate" or "write") about a random item."""
    modality = rng.choice([m for m in MODALITIES if kind != "question" or _MEDIA_QUESTIONS[m]])
    attrs = world.sample_attrs(modality, rng)
    caption, word = world.caption_of(modality, attrs), world.MODALITY_WORDS[modality]
    slot = f"<{modality.value}>\n"
    if kind == "caption":
        ask = rng.choice(world.ASK_TEMPLATES).format(m=word)
        return WorldConversation([Turn("user", slot + ask), Turn("assistant", caption)], [(modality, attrs)])
    if kind == "question":
        question, attribute = rng.choice(_MEDIA_QUESTIONS[modality])
        answer = _answer(attribute, attrs)
        return WorldConversation([Turn("user", slot + question), Turn("assistant", answer)], [(modality, attrs)])
    if kind == "generate":
        make = rng.choice(world.MAKE_TEMPLATES).format(m=word, c=caption)
        reply = rng.choice(world.REPLY_TEMPLATES)
        return WorldConversation([Turn("user", make), Turn("assistant", reply)], open_end=True)
    request = f"Write a short caption for a {word} of {caption}."
    return WorldConversation([Turn("user", request), Turn("assistant", caption[0].upper() + caption[1:] + ".")])


def build_world_conversations(num_conversations: int = 800, seed: int = 0) -> list[WorldConversation]:
    """Conversations in the synthetic world's vocabulary: about media items (slots) and text-only.

    Args:
        num_conversations: how many to draw.
        seed: seed of every draw.

    Returns:
        The conversations; about 70% have one media slot.
    """
    rng = random.Random(seed)
    kinds, weights = list(_KIND_WEIGHTS), list(_KIND_WEIGHTS.values())
    return [_build_conversation(rng.choices(kinds, weights)[0], rng) for _ in range(num_conversations)]


class AttributeSlots(nn.Module):
    """Throwaway slot vectors: one learned embedding per attribute value plus one per modality, summed.

    Args:
        hidden_dim: LLM width.
        init_std: standard deviation of the initial values.
        generator: seeds the initial values.
    """

    def __init__(self, hidden_dim: int, init_std: float, generator: torch.Generator | None = None) -> None:
        super().__init__()
        keys = [
            (m, name, v) for m, values in ATTRIBUTE_VALUES.items() for name, options in values.items() for v in options
        ]
        self.index = {key: row for row, key in enumerate(keys)}
        """Row of each (modality, attribute, value) in `values`."""
        self.values = nn.Parameter(init_std * torch.randn(len(self.index), hidden_dim, generator=generator))
        self.modality_bias = nn.Parameter(init_std * torch.randn(len(MODALITIES), hidden_dim, generator=generator))

    def forward(self, modality: Modality, attrs: list[dict[str, str]]) -> torch.Tensor:
        """Slot vectors of items of one modality.

        Args:
            modality: the items' modality.
            attrs: one attribute dict per item.

        Returns:
            (N, 1, hidden_dim), one token per item (what a `linear` input projector produces).
        """
        rows = torch.tensor([[self.index[(modality, n, a[n])] for n in ATTRIBUTE_VALUES[modality]] for a in attrs])
        summed = self.values[rows].sum(dim=1) + self.modality_bias[MODALITIES.index(modality)]  # (N, A, D) -> (N, D)
        return summed.unsqueeze(1)  # (N, D) -> (N, 1, D)


@dataclass
class _Encoded:
    input_ids: list[int]
    labels: list[int]
    media: list[tuple[Modality, dict[str, str]]]


def _encode(tokenizer: PreTrainedTokenizerBase, conversation: WorldConversation) -> _Encoded:
    example = build_training_example(tokenizer, conversation.turns, {})
    labels = list(example.labels)
    if conversation.open_end:
        assert labels[-1] == tokenizer.eos_token_id, "a training example ends with the EOS of its last answer"
        labels[-1] = IGNORE_INDEX
    return _Encoded(example.input_ids, labels, conversation.media)


def _jitter(vectors: torch.Tensor, scale: float, generator: torch.Generator) -> torch.Tensor:
    """Add Gaussian noise of `scale` times each vector's root mean square."""
    if scale == 0:
        return vectors
    rms = vectors.detach().pow(2).mean(dim=-1, keepdim=True).sqrt()  # (N, 1, D) -> (N, 1, 1)
    return vectors + scale * rms * torch.randn(vectors.shape, generator=generator)


def _strip_system_prompt(example: _Encoded, system_ids: list[int]) -> _Encoded:
    """The example without the system prompt after BOS (unchanged when the ids do not start with it)."""
    end = 1 + len(system_ids)
    if example.input_ids[1:end] != system_ids:
        return example
    return _Encoded(
        example.input_ids[:1] + example.input_ids[end:], example.labels[:1] + example.labels[end:], example.media
    )


def _collate(examples: list[_Encoded], pad_id: int) -> tuple:
    """Right-padded ids, labels and mask, and the attributes of each modality's items in order of appearance."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id)
    labels = torch.full((len(examples), width), IGNORE_INDEX)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    media: dict[Modality, list[dict[str, str]]] = {}
    for row, example in enumerate(examples):
        ids[row, : len(example.input_ids)] = torch.tensor(example.input_ids)
        labels[row, : len(example.labels)] = torch.tensor(example.labels)
        mask[row, : len(example.input_ids)] = 1
        for modality, attrs in example.media:
            media.setdefault(modality, []).append(attrs)
    return ids, labels, mask, media


def _sample_batches(examples: list[_Encoded], batch_size: int, pad_id: int, rng: random.Random) -> Iterator[tuple]:
    """Endless batches of randomly drawn examples (see `_collate`)."""
    while True:
        yield _collate(rng.sample(examples, min(batch_size, len(examples))), pad_id)


@dataclass
class LLMPretrainResult:
    """How the LLM pretraining ended.

    Attributes:
        loss: answer cross-entropy of the last step.
        caption_loss: caption cross-entropy over every attribute combination, slots holding the items' own vectors.
        shuffled_caption_loss: the same with the slot vectors of other items: far higher when the LLM reads the slot.
        seconds: wall time.
    """

    loss: float
    caption_loss: float
    shuffled_caption_loss: float
    seconds: float


def pretrain_tiny_llm(
    llm_dir: Path,
    conversations: list[WorldConversation],
    num_steps: int = 400,
    batch_size: int = 32,
    lr: float = 3e-3,
    num_short_steps: int = 300,
    slot_noise: float = 0.5,
    seed: int = 0,
) -> LLMPretrainResult:
    """Train every weight of the tiny LLM on the conversations (answers only) and save it in place.

    Args:
        llm_dir: an HF LLaMA folder written by `write_tiny_llm` (no signal tokens yet).
        conversations: from `build_world_conversations`.
        num_steps: optimizer steps.
        batch_size: conversations per step.
        lr: peak AdamW learning rate (warmup, then cosine decay).
        num_short_steps: the first steps train on the conversations without the system prompt: a third as long,
            so they are faster and the LLM learns to read the slot several times sooner; the remaining steps use
            the full template that training and inference use.
        slot_noise: Gaussian noise added to every slot vector, relative to its root mean square; it keeps the
            LLM's reading of the slot smooth, so that a fresh input projector gets useful gradients from the start.
        seed: seed of the batches and the throwaway slot embeddings.

    Returns:
        The last step's loss and how well the LLM reads the slot afterwards.

    Raises:
        ValueError: `num_steps` or `batch_size` below 1, `num_short_steps` outside [0, num_steps], or no
            conversations.
    """
    if num_steps < 1 or batch_size < 1 or not conversations or not 0 <= num_short_steps <= num_steps:
        raise ValueError(
            f"pretrain_tiny_llm needs num_steps >= 1, 0 <= num_short_steps <= num_steps, batch_size >= 1 and "
            f"conversations, got {num_steps}, {num_short_steps}, {batch_size} and {len(conversations)} conversations"
        )
    start = time.perf_counter()
    with one_torch_thread(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = AutoTokenizer.from_pretrained(llm_dir)
        model = AutoModelForCausalLM.from_pretrained(llm_dir, dtype=torch.float32)
        # Slot vectors start at the scale of the token embeddings, so the first steps do not see huge inputs.
        init_std = float(model.get_input_embeddings().weight.detach().std())
        slots = AttributeSlots(model.config.hidden_size, init_std, torch.Generator().manual_seed(seed))
        pad_id = tokenizer.unk_token_id if tokenizer.pad_token_id is None else tokenizer.pad_token_id
        examples = [_encode(tokenizer, conversation) for conversation in conversations]
        system_ids = tokenizer(VICUNA_V1_SYSTEM, add_special_tokens=False).input_ids
        phases = [
            (num_short_steps, [_strip_system_prompt(e, system_ids) for e in examples]),
            (num_steps - num_short_steps, examples),
        ]
        loss = _train(model, slots, phases, batch_size, lr, slot_noise, pad_id, seed)
        model.save_pretrained(llm_dir)
        matched, shuffled = _caption_losses(model, tokenizer, slots, pad_id, random.Random(seed))
    result = LLMPretrainResult(loss, matched, shuffled, time.perf_counter() - start)
    logger.info(
        "pretrained tiny LLM for %d steps in %.1f s: answer loss %.3f, caption loss %.3f (%.3f with other items' slots)",
        num_steps,
        result.seconds,
        result.loss,
        result.caption_loss,
        result.shuffled_caption_loss,
    )
    return result


def _train(
    model: nn.Module,
    slots: AttributeSlots,
    phases: list[tuple[int, list[_Encoded]]],
    batch_size: int,
    lr: float,
    slot_noise: float,
    pad_id: int,
    seed: int,
) -> float:
    """AdamW on the LLM and the slot embeddings through the (steps, examples) phases; returns the last loss."""
    num_steps = sum(steps for steps, _ in phases)
    optimizer = torch.optim.AdamW([*model.parameters(), *slots.parameters()], lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, num_steps, 20))
    noise = torch.Generator().manual_seed(seed)
    loss = torch.tensor(float("nan"))
    model.train()
    for phase, (phase_steps, examples) in enumerate(phases):
        batches = _sample_batches(examples, batch_size, pad_id, random.Random(seed + phase))
        for _ in range(phase_steps):
            ids, labels, mask, media = next(batches)
            media_tokens = {m: _jitter(slots(m, attrs), slot_noise, noise) for m, attrs in media.items()}
            spliced = splice_media(ids, mask, labels, model.get_input_embeddings(), media_tokens)
            logits = model(inputs_embeds=spliced.inputs_embeds, attention_mask=spliced.attention_mask).logits
            loss = compute_lm_loss(logits, spliced.labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    return float(loss.detach())


@torch.no_grad()
def _caption_losses(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, slots: AttributeSlots, pad_id: int, rng: random.Random
) -> tuple[float, float]:
    """Caption CE of every attribute combination with its own slot vectors, and with a shuffled assignment."""
    losses = []
    for shuffle in (False, True):
        total = 0.0
        for modality in MODALITIES:
            items = enumerate_world_attrs(modality)
            ask = world.ASK_TEMPLATES[0].format(m=world.MODALITY_WORDS[modality])
            turns = [
                [Turn("user", f"<{modality.value}>\n{ask}"), Turn("assistant", world.caption_of(modality, a))]
                for a in items
            ]
            ids, labels, mask, _ = _collate([_encode(tokenizer, WorldConversation(t)) for t in turns], pad_id)
            shown = rng.sample(items, len(items)) if shuffle else items
            spliced = splice_media(ids, mask, labels, model.get_input_embeddings(), {modality: slots(modality, shown)})
            logits = model(inputs_embeds=spliced.inputs_embeds, attention_mask=spliced.attention_mask).logits
            total += float(compute_lm_loss(logits, spliced.labels)) / len(MODALITIES)
        losses.append(total)
    return losses[0], losses[1]
