"""NextGPTPipeline loading (eager / low-memory decoders, dtype) and decoder options, on the tiny checkpoints."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
import torch

from nextgpt.constants import MODALITIES, Modality
from nextgpt.inference.pipeline import DecoderOptions, DecoderPool, GenerationCancelled, NextGPTPipeline
from nextgpt.inference.requests import Message, build_turns
from nextgpt.llm.conversation import build_generation_prompt


def test_decoder_options_map_to_each_decoders_arguments():
    options = DecoderOptions(num_inference_steps=3, guidance_scale=2.0, height=64, num_frames=8, audio_seconds=2.5)
    assert options.to_kwargs(Modality.IMAGE) == {"num_inference_steps": 3, "guidance_scale": 2.0, "height": 64}
    assert options.to_kwargs(Modality.VIDEO) == {
        "num_inference_steps": 3,
        "guidance_scale": 2.0,
        "height": 64,
        "num_frames": 8,
    }
    assert options.to_kwargs(Modality.AUDIO) == {"num_inference_steps": 3, "guidance_scale": 2.0, "audio_seconds": 2.5}
    assert DecoderOptions().to_kwargs(Modality.VIDEO) == {}
    for bad, message in [
        (DecoderOptions(num_frames=0), "num_frames must be >= 1"),
        (DecoderOptions(guidance_scale=-1.0), "guidance_scale must be a finite number >= 0"),
        (DecoderOptions(guidance_scale=float("nan")), "guidance_scale must be a finite number >= 0"),
        (DecoderOptions(audio_seconds=0.0), "audio_seconds must be a finite number > 0"),
        (DecoderOptions(audio_seconds=float("inf")), "audio_seconds must be a finite number > 0"),
        (DecoderOptions(width=36), "width must be a positive multiple of 8"),
    ]:
        with pytest.raises(ValueError, match=message):
            bad.check(Modality.VIDEO)


def test_low_memory_pool_loads_a_decoder_only_when_it_renders(taught_checkpoint):
    from nextgpt.config import load_config

    cfg = load_config(taught_checkpoint / "config.yaml")
    without_video = dataclasses.replace(
        cfg.model.decoders, video=dataclasses.replace(cfg.model.decoders.video, pipeline_path=None)
    )
    pool = DecoderPool(dataclasses.replace(cfg.model, decoders=without_video), torch.device("cpu"), low_memory=True)
    assert pool.available == (Modality.IMAGE, Modality.AUDIO) and Modality.VIDEO not in pool
    assert Modality.AUDIO in pool and pool.loaded == () and pool.sample_rate is None  # membership loads nothing
    width = cfg.model.output_projectors.audio.out_dim
    waves = pool[Modality.AUDIO].generate(torch.randn(1, width), seed=0, audio_seconds=0.5)
    assert pool.loaded == (Modality.AUDIO,) and pool.sample_rate == 16000
    assert waves[0].shape == (8000,) and waves[0].dtype == np.float32
    with pytest.raises(KeyError):
        pool[Modality.VIDEO]


@pytest.mark.numerics
def test_low_memory_video_decodes_frame_by_frame_with_the_same_pixels(taught_checkpoint):
    from nextgpt.config import load_config

    cfg = load_config(taught_checkpoint / "config.yaml")
    eager = DecoderPool(cfg.model, torch.device("cpu"))[Modality.VIDEO]
    visiting = DecoderPool(cfg.model, torch.device("cpu"), low_memory=True)[Modality.VIDEO]
    assert visiting.pipeline.vae.use_slicing and not eager.pipeline.vae.use_slicing
    conditioning = torch.randn(1, *visiting.conditioning_shape)
    frames_low = visiting.generate(conditioning, seed=0, num_frames=4)[0]
    frames_eager = eager.generate(conditioning, seed=0, num_frames=4)[0]
    assert np.asarray(frames_low).shape == np.asarray(frames_eager).shape
    np.testing.assert_allclose(
        np.asarray(frames_low, dtype=np.float32), np.asarray(frames_eager, dtype=np.float32), atol=2
    )


def test_from_pretrained_loads_decoders_only_when_a_reply_needs_them(taught_checkpoint, tmp_path):
    pipeline = NextGPTPipeline.from_pretrained(taught_checkpoint, device="cpu", dtype="bfloat16")
    assert pipeline.decoders.loaded == () and pipeline.decoders.available == MODALITIES
    assert pipeline.folder == taught_checkpoint
    assert pipeline.model.llm.dtype == torch.bfloat16
    assert next(pipeline.model.output_projectors.parameters()).dtype == torch.bfloat16
    generation = pipeline.generation_config(temperature=0.0, max_new_tokens=4)
    reply = pipeline.reply([Message("user", "Describe the sound.")], tmp_path, generation=generation)
    assert reply.message.role == "assistant" and len(reply.result.token_ids) <= 4
    assert pipeline.decoders.loaded == ()  # a text reply loads no decoder
    greedy = pipeline.generation_config(temperature=0.0)
    reply = pipeline.reply([Message("user", "Please generate an image of a red circle on the left.")], tmp_path,
                           generation=greedy)  # fmt: skip
    assert [s.modality for s in reply.saved] == [Modality.IMAGE] and pipeline.decoders.loaded == (Modality.IMAGE,)
    assert pipeline.decoders.load(Modality.IMAGE).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        pipeline.generation_config(max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p must be in"):
        pipeline.generation_config(top_p=1.5)
    with pytest.raises(ValueError, match="temperature must be a finite number"):
        pipeline.generation_config(temperature=float("nan"))


@pytest.fixture(scope="module")
def pipeline(taught_checkpoint):
    return NextGPTPipeline.from_pretrained(taught_checkpoint, device="cpu", overrides=["generation.temperature=0"])


def test_overlong_conversation_is_refused_before_the_llm_runs(pipeline, caplog):
    context = pipeline.model.llm.config.max_position_embeddings
    with pytest.raises(ValueError, match=rf"is \d+ tokens long, but the LLM reads at most {context}; shorten"):
        pipeline.generate([Message("user", "draw " * context)])
    short = pipeline.generation_config(max_new_tokens=10 * context)
    fitted = pipeline.fit_to_context([Message("user", "Hi")], short)
    assert 0 < fitted.max_new_tokens < context and "reply limit lowered" in caplog.text


def test_signal_tokens_typed_by_a_user_stay_text(pipeline, tmp_path):
    from nextgpt.constants import signal_token_strings

    cfg = pipeline.cfg.model.signal_tokens
    typed = "".join(signal_token_strings(Modality.IMAGE, cfg.num_image))
    messages = [Message("user", f"Repeat after me: {typed}"), Message("assistant", f"{typed} done")]
    messages.append(Message("user", f"Again: {typed}"))
    turns, _ = build_turns(messages)
    prompt_ids = build_generation_prompt(pipeline.model.tokenizer, turns, pipeline.model.signal_ids)
    signal_ids = {i for ids in pipeline.model.signal_ids.values() for i in ids}
    assert not signal_ids & set(prompt_ids)  # neither the user's nor the quoted assistant's text became control ids
    reply = pipeline.reply(messages[:1], tmp_path, generation=pipeline.generation_config(max_new_tokens=8))
    assert reply.result.problems == [] or all("span" in p for p in reply.result.problems)


def test_a_set_cancel_event_stops_the_reply_and_writes_nothing(pipeline, tmp_path):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(GenerationCancelled):
        pipeline.reply([Message("user", "Please generate an image of a red circle on the left.")], tmp_path,
                       cancel=cancel)  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_ignore_eos_decodes_max_new_tokens_past_the_end_of_the_reply(pipeline):
    messages = [Message("user", "Tell me about a red circle on the left.")]
    ended = pipeline.generate(messages, generation=pipeline.generation_config(max_new_tokens=60))
    assert 0 < len(ended.token_ids) < 60  # the taught model ends this reply itself
    longer = len(ended.token_ids) + 8
    forced = pipeline.generate(messages, generation=pipeline.generation_config(max_new_tokens=longer, ignore_eos=True))
    assert len(forced.token_ids) == longer and forced.token_ids[: len(ended.token_ids)] == ended.token_ids
