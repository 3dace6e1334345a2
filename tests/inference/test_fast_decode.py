"""FastDecoder (static KV cache + compiled step), the only text decoding, against HF `generate` on the tiny LLM: same
greedy tokens, same seeded samples, in the decoder and in whole replies; its config switch and CLI flag."""

from __future__ import annotations

import copy
import logging
import threading

import numpy as np
import pytest
import torch
from transformers.generation.streamers import BaseStreamer

from nextgpt.cli import predict
from nextgpt.config import ConfigError, GenerationConfig, load_config
from nextgpt.constants import MODALITIES
from nextgpt.decoders.cancel import GenerationCancelled
from nextgpt.inference.fast_decode import FastDecoder, decode_tokens_per_second
from nextgpt.inference.generation import _build_prompt_batch, stop_token_ids
from nextgpt.inference.pipeline import NextGPTPipeline
from nextgpt.inference.requests import Message, build_turns
from nextgpt.llm.conversation import Turn, build_generation_prompt
from nextgpt.llm.lora import merge_lora
from nextgpt.llm.splice import splice_media
from nextgpt.model import build_nextgpt

PROMPTS = (
    "Please generate an image of a red circle.",
    "Describe the sound of a high tone, then show me a picture of a blue star moving left.",
    "hello",
)
MEDIA_REQUESTS = (
    "Please generate an image of a red circle on the left.",
    "Please generate a video of a blue square moving up.",
    "Please generate a sound of a steady low tone.",
)


@pytest.fixture(scope="module")
def lora_model(tiny_root, tiny_cfg_path):
    """The tiny NextGPT with LoRA whose B matrices are random (so the adapters change the logits)."""
    from nextgpt.tiny.build import tiny_path_overrides

    cfg = load_config(tiny_cfg_path, overrides=[*tiny_path_overrides(tiny_root), "model.lora.enabled=true"])
    torch.manual_seed(0)
    model = build_nextgpt(cfg.model, load_encoder=False).eval()
    with torch.no_grad():
        for name, param in model.llm.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.05)
    return model


def _prompt_embeds(model, text: str, llm=None) -> torch.Tensor:
    ids = torch.tensor([build_generation_prompt(model.tokenizer, [Turn("user", text)])])  # (1, L)
    vocab = (llm or model.llm).get_input_embeddings()
    with torch.no_grad():
        return vocab(ids)  # (1, L, D)


def _plain(llm, embeds: torch.Tensor, max_new_tokens: int, stop_id: int, **sampling) -> list[int]:
    with torch.no_grad():
        out = llm.generate(
            inputs_embeds=embeds,
            attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
            max_new_tokens=max_new_tokens,
            eos_token_id=stop_id,
            pad_token_id=0,
            do_sample=bool(sampling),
            **sampling,
        )
    return out[0].tolist()


@pytest.mark.numerics
def test_greedy_tokens_match_generate_for_several_prompts_reusing_the_cache(lora_model):
    eos = lora_model.tokenizer.eos_token_id
    decoder = FastDecoder(lora_model.llm, max_cache_len=160, compile=False)
    assert not decoder.compile
    lengths, cache_ptrs = [], set()
    # The last request runs without a stop id, to the limit, on a cache that held longer prompts before.
    for text, stop_ids in [*((t, [eos]) for t in PROMPTS), (PROMPTS[0], [])]:
        embeds = _prompt_embeds(lora_model, text)
        expected = _plain(lora_model.llm, embeds, 40, stop_ids[0] if stop_ids else -1)
        assert decoder.generate(embeds, 40, eos_token_ids=stop_ids).tolist() == expected
        lengths.append(len(expected))
        cache_ptrs.add(decoder.cache.layers[0].keys.data_ptr())
    assert len(cache_ptrs) == 1 and decoder.max_cache_len == 160  # reset between calls, never reallocated
    assert lengths[-1] == 40 and all(n < 40 for n in lengths[:-1])  # the replies ended by end-of-sequence did end


@pytest.mark.numerics
@pytest.mark.parametrize("variant", ["merged", "bfloat16"])
def test_greedy_tokens_match_generate_for_merged_and_bf16_llms(lora_model, variant):
    llm = merge_lora(copy.deepcopy(lora_model.llm))
    if variant == "bfloat16":
        llm = llm.to(torch.bfloat16)
    decoder = FastDecoder(llm, max_cache_len=128, compile=False)
    for text in PROMPTS[:2]:
        embeds = _prompt_embeds(lora_model, text, llm)
        assert embeds.dtype == llm.dtype
        expected = _plain(llm, embeds, 30, stop_id=-1)
        assert decoder.generate(embeds, 30).tolist() == expected
    assert decoder.cache.layers[0].keys.dtype == llm.dtype


@pytest.mark.numerics
def test_sampling_with_a_fixed_generator_matches_the_seeded_plain_sampler(lora_model):
    eos = lora_model.tokenizer.eos_token_id
    decoder = FastDecoder(lora_model.llm, max_cache_len=128, compile=False)
    embeds = _prompt_embeds(lora_model, PROMPTS[1])
    draws = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        expected = _plain(lora_model.llm, embeds, 30, eos, temperature=0.8, top_p=0.9, top_k=0)
        generator = torch.Generator().manual_seed(seed)
        fast = decoder.generate(embeds, 30, temperature=0.8, top_p=0.9, eos_token_ids=[eos], generator=generator)
        assert fast.tolist() == expected
        draws.append(expected)
    assert draws[0] != draws[1]  # the seed matters, so equality above is not a greedy coincidence
    torch.manual_seed(1)  # generator=None draws from the global RNG, like `generate`
    assert decoder.generate(embeds, 30, temperature=0.8, top_p=0.9, eos_token_ids=[eos]).tolist() == draws[0]


def test_reply_ends_at_the_first_stop_id_wherever_it_falls(lora_model):
    # Several check windows within a short reply (the GPU checks every STOP_CHECK_INTERVAL tokens, the CPU every one).
    decoder = FastDecoder(lora_model.llm, max_cache_len=160, compile=False, stop_check_interval=4)
    embeds = _prompt_embeds(lora_model, PROMPTS[2])
    unstopped = decoder.generate(embeds, 24).tolist()
    # A stop id at each position where its token first appears, inside and at the end of check windows.
    tested = [index for index, token in enumerate(unstopped) if token not in unstopped[:index]]
    assert {3, 7} <= set(tested)  # stop ids on the last token of a check window
    for index in tested:
        expected = _plain(lora_model.llm, embeds, 24, stop_id=unstopped[index])
        assert expected == unstopped[: index + 1]
        assert decoder.generate(embeds, 24, eos_token_ids=[unstopped[index], 10_000]).tolist() == expected


class _Recorder(BaseStreamer):
    def __init__(self):
        self.puts: list[list[int]] = []
        self.ended = False

    def put(self, value: torch.Tensor) -> None:
        self.puts.append(value.reshape(-1).tolist())

    def end(self) -> None:
        self.ended = True


def test_streamer_gets_the_prompt_then_every_token_like_generate(lora_model):
    eos = lora_model.tokenizer.eos_token_id
    embeds = _prompt_embeds(lora_model, PROMPTS[0])
    plain, fast = _Recorder(), _Recorder()
    with torch.no_grad():
        lora_model.llm.generate(
            inputs_embeds=embeds, max_new_tokens=30, do_sample=False, eos_token_id=eos, pad_token_id=0, streamer=plain
        )
    tokens = FastDecoder(lora_model.llm, 160, compile=False).generate(embeds, 30, eos_token_ids=[eos], streamer=fast)
    assert fast.puts[0] == plain.puts[0] == [] and fast.ended and plain.ended  # streamers skip the first put
    assert sum(fast.puts[1:], []) == sum(plain.puts[1:], []) == tokens.tolist()
    assert fast.puts == plain.puts  # on the CPU one token per put, as from `generate`
    windows = _Recorder()
    FastDecoder(lora_model.llm, 160, compile=False, stop_check_interval=8).generate(embeds, 30, streamer=windows)
    assert [len(put) for put in windows.puts] == [0, 8, 8, 8, 6]  # the GPU's cadence: a window per host check


def test_cancel_stops_decoding_before_the_next_step_whatever_the_check_interval(lora_model):
    embeds = _prompt_embeds(lora_model, PROMPTS[0])
    decoder = FastDecoder(lora_model.llm, 160, compile=False, stop_check_interval=16)
    cancel, steps = threading.Event(), []
    step = decoder._step

    def counted_step(*args):
        steps.append(1)
        if len(steps) == 3:
            cancel.set()  # from "another thread", between two steps
        return step(*args)

    decoder._step = counted_step
    streamed = _Recorder()
    with pytest.raises(GenerationCancelled):
        decoder.generate(embeds, 30, streamer=streamed, cancel=cancel)
    assert len(steps) == 3 and streamed.puts == [[]]  # no step after the set event, no window reached the streamer
    with pytest.raises(GenerationCancelled):  # a set event stops before the prefill
        decoder.generate(embeds, 30, cancel=cancel)
    assert len(steps) == 3


def test_too_long_request_fails_with_the_fix_and_reserve_grows_the_cache(lora_model):
    decoder = FastDecoder(lora_model.llm, max_cache_len=24, compile=False)
    embeds = _prompt_embeds(lora_model, PROMPTS[0])  # (1, L, D) with L > 16
    with pytest.raises(ValueError, match=r"exceeds the static KV cache of 24; build the FastDecoder with a larger"):
        decoder.generate(embeds, 8)
    with pytest.raises(ValueError, match=r"one prompt, inputs_embeds \(1, L, D\)"):
        decoder.generate(embeds.expand(2, -1, -1), 2)
    decoder.reserve(embeds.shape[1] + 8)
    assert decoder.max_cache_len == 256
    assert decoder.generate(embeds, 8).tolist() == _plain(lora_model.llm, embeds, 8, stop_id=-1)


@pytest.mark.numerics
def test_compiled_step_on_cpu_gives_the_same_tokens(lora_model):
    decoder = FastDecoder(lora_model.llm, max_cache_len=128, compile=True)
    for text in PROMPTS[:2]:
        embeds = _prompt_embeds(lora_model, text)
        assert decoder.generate(embeds, 12).tolist() == _plain(lora_model.llm, embeds, 12, stop_id=-1)


def test_tokens_per_second_helper_runs_both_paths(lora_model):
    for fast in (False, True):
        rate = decode_tokens_per_second(lora_model.llm, prompt_len=8, new_tokens=4, fast=fast)
        assert np.isfinite(rate) and rate > 0


def _hf_reply_ids(pipeline: NextGPTPipeline, request: str, generation: GenerationConfig) -> list[int]:
    """The reply's token ids from HF `generate` on the prompt `generate_reply` builds, seeded the same: the decoding
    inference used before FastDecoder became the only one."""
    model = pipeline.model
    turns, _ = build_turns([Message("user", request)])
    batch = _build_prompt_batch(model, turns, {})
    with torch.no_grad():
        spliced = splice_media(batch.input_ids, batch.attention_mask, None, model.embed_tokens, {})
        sampling = {"do_sample": False}
        if generation.temperature > 0:
            sampling = {"do_sample": True, "temperature": generation.temperature, "top_p": generation.top_p, "top_k": 0}
        torch.manual_seed(generation.seed)
        out = model.llm.generate(
            inputs_embeds=spliced.inputs_embeds,
            attention_mask=spliced.attention_mask,
            max_new_tokens=generation.max_new_tokens,
            eos_token_id=stop_token_ids(model),
            pad_token_id=model.tokenizer.pad_token_id,
            **sampling,
        )
    return out[0].tolist()


@pytest.mark.numerics
def test_pipeline_replies_decode_the_tokens_of_hf_generate_with_one_kept_decoder(taught_checkpoint):
    pipeline = NextGPTPipeline.from_pretrained(taught_checkpoint, device="cpu")
    num_spans, kept = 0, None
    for request in MEDIA_REQUESTS:
        for generation in (
            pipeline.generation_config(temperature=0.0),
            pipeline.generation_config(temperature=0.7, top_p=0.9, seed=5),
        ):
            reply = pipeline.generate([Message("user", request)], generation)
            assert reply.token_ids == _hf_reply_ids(pipeline, request, generation)
            num_spans += sum(len(reply.outputs(m)) for m in MODALITIES)
            kept = kept or pipeline.fast_decoder(generation)
            assert pipeline.fast_decoder(generation) is kept and not kept.compile  # one eager decoder on the CPU
    assert num_spans >= 2  # the taught model answers (at least) the video and audio requests with their media
    assert pipeline.generation_config(temperature=0.7, seed=5).compile_decode is None
    compiled = pipeline.fast_decoder(pipeline.generation_config(compile_decode=True))  # compiles lazily, at first use
    assert compiled is not kept and compiled.compile and compiled.max_cache_len == kept.max_cache_len
    assert not pipeline.fast_decoder(pipeline.generation_config(compile_decode=False)).compile


def test_compile_decode_switch_flag_and_the_removed_fast_decode_key(tiny_cfg_path, tmp_path, capsys, caplog):
    argv = ["--checkpoint-dir", "runs/stage_3/final", "--prompt", "hi"]
    parser = predict._build_parser()
    assert parser.parse_args(argv).compile_decode is None  # the config's value stays
    assert parser.parse_args([*argv, "--compile-decode"]).compile_decode is True
    assert parser.parse_args([*argv, "--no-compile-decode"]).compile_decode is False
    assert predict.main([*argv, "--fast-decode"]) == 2
    assert "--fast-decode was removed" in capsys.readouterr().err
    assert load_config(tiny_cfg_path).generation.compile_decode is None
    for text, value in [("true", True), ("false", False), ("null", None)]:
        overrides = [f"generation.compile_decode={text}"]
        assert load_config(tiny_cfg_path, overrides=overrides).generation.compile_decode is value
    with pytest.raises(ConfigError, match=r"generation.compile_decode must be true or false, got 'sometimes'"):
        load_config(tiny_cfg_path, overrides=["generation.compile_decode=sometimes"])
    with pytest.raises(ConfigError, match=r"compile_decode must be true, false or null .*got 1"):
        GenerationConfig(compile_decode=1)
    # Checkpoints saved before the rename hold `fast_decode: false` (the old default): it loads quietly and means
    # nothing. Any other value loads too (a checkpoint must stay loadable), with a warning naming what replaced it.
    saved = tmp_path / "config.yaml"
    saved.write_text("generation:\n  temperature: 0.0\n  fast_decode: false\n")
    with caplog.at_level(logging.WARNING, logger="nextgpt"):
        assert load_config(saved).generation == GenerationConfig(temperature=0.0)
    assert "fast_decode" not in caplog.text
    saved.write_text("generation:\n  fast_decode: true\n")
    with caplog.at_level(logging.WARNING, logger="nextgpt"):
        assert load_config(saved).generation == GenerationConfig()
    assert "'generation.fast_decode' is no longer used and is ignored" in caplog.text
    assert "set generation.compile_decode" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nextgpt"):
        load_config(tiny_cfg_path, overrides=["model.llm.attn_implementation=varlen"])
    assert "'model.llm.attn_implementation' is no longer used" in caplog.text


@pytest.mark.gpu
def test_prefill_graphs_give_the_tokens_and_cache_of_the_eager_prefill_on_cuda():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=97
    )
    torch.manual_seed(0)
    llm = LlamaForCausalLM(config).cuda().eval()
    eager = FastDecoder(llm, max_cache_len=64, compile=False)
    graphed = FastDecoder(llm, max_cache_len=64, compile=False, prefill_graphs=True)
    assert eager._prefill_graphs is None
    generator = torch.Generator(device="cuda").manual_seed(0)
    for length in (5, 9, 5, 9, 12, 5, 12):
        embeds = torch.randn(1, length, 64, device="cuda", generator=generator)  # (1, L, D)
        expected = eager.generate(embeds, 8)
        assert graphed.generate(embeds, 8).tolist() == expected.tolist()
        for ours, reference in zip(graphed.cache.layers, eager.cache.layers, strict=True):
            assert torch.allclose(ours.keys, reference.keys, atol=1e-5)
            assert torch.allclose(ours.values, reference.values, atol=1e-5)
    assert graphed._prefill_graphs.enabled
    assert sorted(graphed._prefill_graphs.graphs) == [5, 9, 12]  # each captured when its length came again
    with pytest.raises(ValueError, match="prefill_graphs needs the LLM on CUDA"):
        FastDecoder(llm.cpu(), max_cache_len=8, prefill_graphs=True)
