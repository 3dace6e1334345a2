"""Batched text decoding answers each request as it is answered alone (greedy and seeded), whatever its neighbours."""

from __future__ import annotations

import threading

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from nextgpt.decoders.cancel import GenerationCancelled
from nextgpt.inference.batch_decode import BatchDecoder, DecodeRow, decode_batch
from nextgpt.inference.fast_decode import FastDecoder
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


def _random_llama_and_prompts() -> tuple[LlamaForCausalLM, list[torch.Tensor]]:
    """A 2-layer random LLaMA (grouped-query attention) and three prompts of different lengths, (1, L, D) each."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256,
    )  # fmt: skip
    llm = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        prompts = [llm.get_input_embeddings()(torch.randint(0, 97, (1, n))) for n in (5, 12, 8)]
    return llm, prompts


def test_a_kept_decoder_answers_batches_of_any_size_as_each_prompt_alone():
    llm, prompts = _random_llama_and_prompts()
    single = FastDecoder(llm, max_cache_len=64, compile=False)
    alone = [single.generate(p, 10).tolist() for p in prompts]
    decoder = BatchDecoder(llm, max_batch_size=3, max_cache_len=16, compile=False)  # too short: eager needs no room
    assert [r.tolist() for r in decoder.decode([DecodeRow(p, 10) for p in prompts])] == alone
    assert decoder.cache.get_max_length() == 12 + 10  # eager: this batch's longest prompt + reply, not max_cache_len
    assert [r.tolist() for r in decoder.decode([DecodeRow(prompts[1], 10)])] == [alone[1]]
    with pytest.raises(ValueError, match="exceed the decoder's max_batch_size of 3"):
        decoder.decode([DecodeRow(prompts[0], 4)] * 4)


def test_ignore_eos_rows_run_to_their_length_while_the_others_stop():
    llm, prompts = _random_llama_and_prompts()
    alone = [FastDecoder(llm, max_cache_len=64, compile=False).generate(p, 6).tolist() for p in prompts[:2]]
    stop = alone[0][1]  # the first row's second token ends its reply
    rows = [DecodeRow(prompts[0], 6), DecodeRow(prompts[0], 6, ignore_eos=True), DecodeRow(prompts[1], 6)]
    decoded = [r.tolist() for r in decode_batch(llm, rows, eos_token_ids=[stop])]
    assert decoded[0] == alone[0][:2] and decoded[1] == alone[0]
    cut = alone[1].index(stop) + 1 if stop in alone[1] else 6
    assert decoded[2] == alone[1][:cut]


@pytest.mark.slow  # compiling the step on the CPU takes one to three minutes
def test_the_compiled_step_fills_a_small_batch_with_dummy_rows_without_changing_any_reply():
    llm, prompts = _random_llama_and_prompts()
    single = FastDecoder(llm, max_cache_len=64, compile=False)
    alone = [single.generate(p, 10).tolist() for p in prompts]
    decoder = BatchDecoder(llm, max_batch_size=4, max_cache_len=40, compile=True)
    assert [r.tolist() for r in decoder.decode([DecodeRow(p, 10) for p in prompts[:2]])] == alone[:2]
    assert [r.tolist() for r in decoder.decode([DecodeRow(p, 10) for p in prompts])] == alone
