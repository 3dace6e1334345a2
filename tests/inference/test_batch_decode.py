"""Batched text decoding answers each request as it is answered alone (greedy and seeded), whatever its neighbours."""

from __future__ import annotations

import threading

import pytest
import torch

from nextgpt.decoders.cancel import GenerationCancelled
from nextgpt.inference.batch_decode import decode_batch
from nextgpt.inference.generation import stop_token_ids
from nextgpt.inference.pipeline import NextGPTPipeline
from nextgpt.inference.requests import Message

PROMPTS = [
    "Please generate an image of a red circle on the left.",
    "What can you do?",
    "Please generate a sound of a steady low tone.",
    "Please generate a video of a blue square moving up, and tell me about it in many words.",
    "Hi",
]


@pytest.fixture(scope="module")
def pipeline(taught_checkpoint) -> NextGPTPipeline:
    return NextGPTPipeline.from_pretrained(taught_checkpoint, device="cpu", overrides=["generation.max_new_tokens=24"])


@pytest.mark.numerics
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_batched_replies_equal_the_replies_decoded_alone(pipeline, temperature):
    generation = pipeline.generation_config(temperature=temperature, top_p=0.9, seed=5)
    conversations = [[Message("user", p)] for p in PROMPTS]
    alone = [pipeline.generate(c, generation, decoder_options=None) for c in conversations]
    prepared = [pipeline.prepare(c, generation) for c in conversations]
    assert len({p.prompt_tokens for p in prepared}) > 1  # the batch really is left-padded
    batched = decode_batch(pipeline.model.llm, [p.decode_row() for p in prepared], stop_token_ids(pipeline.model))
    for single, ids in zip(alone, batched, strict=True):
        assert ids.tolist() == single.token_ids
    assert any(r.images or r.videos or r.audios for r in alone)  # media requests are among them
    assert [r.text for r in pipeline.generate_batch(conversations, generation)] == [r.text for r in alone]


def test_a_cancelled_row_leaves_the_batch_and_the_others_finish(pipeline):
    generation = pipeline.generation_config(temperature=0.0, max_new_tokens=12)
    prepared = [pipeline.prepare([Message("user", p)], generation) for p in PROMPTS[:3]]
    cancel = threading.Event()
    cancel.set()
    rows = [p.decode_row() for p in prepared]
    rows[1].cancel = cancel
    results = decode_batch(pipeline.model.llm, rows, stop_token_ids(pipeline.model))
    assert isinstance(results[1], GenerationCancelled)
    alone = decode_batch(pipeline.model.llm, [prepared[0].decode_row()], stop_token_ids(pipeline.model))
    assert isinstance(results[0], torch.Tensor) and results[0].tolist() == alone[0].tolist()
    assert 1 <= results[2].numel() <= 12
