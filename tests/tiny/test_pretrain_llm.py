"""Tiny LLM pretraining: the world's conversations, the slot vectors, and a short deterministic in-place run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nextgpt.constants import MODALITIES, Modality
from nextgpt.llm.tokenizer import split_placeholders
from nextgpt.tiny import data as world
from nextgpt.tiny.pretrain import AttributeSlots, build_world_conversations, pretrain_tiny_llm


def _possible_answers(modality: Modality, attrs: dict[str, str]) -> set[str]:
    """The caption, or the answer to one of the attribute questions."""
    answers = {world.caption_of(modality, attrs)}
    if modality == Modality.IMAGE:
        answers |= {attrs["colour"], world.POSITION_WORDS[attrs["position"]]}
    if modality == Modality.VIDEO:
        answers.add(f"It moves {attrs['direction']}.")
    return answers


def test_world_conversations_are_seeded_and_name_their_media() -> None:
    conversations = build_world_conversations(300, seed=0)

    assert conversations == build_world_conversations(300, seed=0)
    assert conversations != build_world_conversations(300, seed=1)
    for conversation in conversations:
        user, assistant = conversation.turns
        placeholders = [p for p in split_placeholders(user.text) if isinstance(p, Modality)]
        assert placeholders == [m for m, _ in conversation.media]
        assert all(isinstance(p, str) for p in split_placeholders(assistant.text))
        if conversation.media:
            modality, attrs = conversation.media[0]
            assert assistant.text in _possible_answers(modality, attrs)
        # Only media requests leave their end open (later stages answer them with signal tokens).
        assert conversation.open_end == (assistant.text in world.REPLY_TEMPLATES)
    num_with_media = sum(bool(c.media) for c in conversations)
    assert 0.5 < num_with_media / len(conversations) < 0.9
    assert 0.1 < sum(c.open_end for c in conversations) / len(conversations) < 0.3
    assert {m for c in conversations for m, _ in c.media} == set(MODALITIES)


@pytest.mark.numerics
def test_attribute_slots_sum_one_vector_per_attribute() -> None:
    slots = AttributeSlots(hidden_dim=8, init_std=0.5, generator=torch.Generator().manual_seed(0))
    red = {"colour": "red", "shape": "circle", "position": "left"}
    blue = dict(red, colour="blue")

    vectors = slots(Modality.IMAGE, [red, blue])

    assert vectors.shape == (2, 1, 8)
    row = slots.index
    expected = (
        slots.values[row[(Modality.IMAGE, "colour", "red")]] - slots.values[row[(Modality.IMAGE, "colour", "blue")]]
    )
    torch.testing.assert_close(vectors[0, 0] - vectors[1, 0], expected)
    # The same colour and shape in a video has its own rows (and modality vector).
    red_video = {"colour": "red", "shape": "circle", "direction": "left"}
    assert not torch.allclose(slots(Modality.VIDEO, [red_video])[0], vectors[0])


@pytest.fixture()
def fresh_llm_dirs(tmp_path: Path) -> list[Path]:
    from nextgpt.tiny.llm import write_tiny_llm

    first = write_tiny_llm(tmp_path / "a")
    second = tmp_path / "b"
    shutil.copytree(first, second)
    return [first, second]


def test_pretraining_keeps_the_hf_folder_and_is_deterministic(fresh_llm_dirs: list[Path]) -> None:
    from transformers import AutoModelForCausalLM

    config_before = json.loads((fresh_llm_dirs[0] / "config.json").read_text())
    weights_before = load_file(fresh_llm_dirs[0] / "model.safetensors")
    conversations = build_world_conversations(40, seed=0)

    results = [
        pretrain_tiny_llm(d, conversations, num_steps=4, batch_size=4, num_short_steps=2) for d in fresh_llm_dirs
    ]

    first, second = (load_file(d / "model.safetensors") for d in fresh_llm_dirs)
    assert {k: v.shape for k, v in first.items()} == {k: v.shape for k, v in weights_before.items()}
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["model.embed_tokens.weight"], weights_before["model.embed_tokens.weight"])
    config_after = json.loads((fresh_llm_dirs[0] / "config.json").read_text())
    assert {k: v for k, v in config_after.items() if k != "transformers_version"} == {
        k: v for k, v in config_before.items() if k != "transformers_version"
    }
    AutoModelForCausalLM.from_pretrained(fresh_llm_dirs[0])
    first_losses, second_losses = ((r.loss, r.caption_loss, r.shuffled_caption_loss) for r in results)
    assert first_losses == second_losses
    assert all(0 < loss < float("inf") for loss in first_losses)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_steps": 0}, "num_steps >= 1"),
        ({"num_steps": 4, "num_short_steps": 5}, "num_short_steps"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_pretraining_rejects_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        pretrain_tiny_llm(tmp_path, build_world_conversations(4), **kwargs)
