"""The demo's handlers without a browser: a full reply with inline media, retry, clear, and every bad input."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import numpy as np
import pytest

from nextgpt.constants import Modality
from nextgpt.inference.media_io import save_image
from nextgpt.inference.requests import Message
from nextgpt.serving.gradio_app import ChatHandlers, DemoSettings, build_demo, render_chat

IMAGE_REQUEST = "Please generate an image of a red circle on the left."


@pytest.fixture(scope="module")
def demo(demo_pipeline, tmp_path_factory):
    return build_demo(demo_pipeline, DemoSettings(max_upload_mb=0.01, output_dir=tmp_path_factory.mktemp("demo")))


@pytest.fixture()
def settings(demo_pipeline):
    """Settings-panel values as the page sends them by default (checkpoint config)."""
    cfg = demo_pipeline.cfg
    generation, decoders = cfg.generation, cfg.model.decoders
    return [
        generation.temperature, generation.top_p, generation.max_new_tokens, generation.seed,
        decoders.image.guidance_scale, decoders.image.num_inference_steps,
        decoders.video.guidance_scale, decoders.video.num_inference_steps, decoders.video.num_frames,
        decoders.audio.guidance_scale, decoders.audio.num_inference_steps, decoders.audio.audio_seconds,
    ]  # fmt: skip


@pytest.fixture()
def small_png(tmp_path) -> Path:
    return save_image(np.full((32, 32, 3), 200, np.uint8), tmp_path / "small.png")


def _last(updates):
    *_, last = updates
    return last


def test_render_chat_shows_text_then_files():
    history = [
        Message("user", "Look", {Modality.IMAGE: [Path("a.png")], Modality.AUDIO: [Path("b.wav")]}),
        Message("assistant", ""),
    ]
    assert render_chat(history) == [
        {"role": "user", "content": "Look"},
        {"role": "user", "content": {"path": "a.png"}},
        {"role": "user", "content": {"path": "b.wav"}},
        {"role": "assistant", "content": "(empty reply)"},
    ]


@pytest.mark.numerics
def test_submit_streams_then_shows_the_generated_image_and_retry_replaces_it(demo, settings, small_png):
    handlers: ChatHandlers = demo.handlers
    updates = list(handlers.submit(IMAGE_REQUEST, str(small_png), None, None, [], *settings))
    chat, history, text, image, video, audio = updates[-1]
    assert (text, image, video, audio) == ("", None, None, None)  # inputs cleared after the reply
    user, reply = history
    assert user.media == {Modality.IMAGE: [small_png]} and reply.role == "assistant"
    generated = reply.media[Modality.IMAGE][0]
    assert all(path.is_file() and path.parent == demo.output_dir for path in reply.media[Modality.IMAGE])
    assert {"role": "assistant", "content": {"path": str(generated)}} in chat
    for streaming in updates[:-1]:  # while streaming, history and inputs are left alone
        assert all(isinstance(value, type(gr.skip())) for value in streaming[1:])
    chat, retried = _last(handlers.retry(history, *settings))
    assert len(retried) == 2 and retried[0] is user and retried[1].media[Modality.IMAGE][0] != generated
    assert handlers.clear() == ([], [], "", None, None, None)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (("  ", None, None, None), "the prompt is empty"),
        (("Describe", "{tmp}/missing.png", None, None), "image file not found"),
        (("Describe", None, None, "{tmp}/notes.txt"), "not a supported audio format"),
        (("Describe", "{tmp}/big.png", None, None), "over the 0.0 MB upload limit"),
    ],
)
def test_bad_input_is_a_visible_error(demo, settings, tmp_path, inputs, message):
    (tmp_path / "notes.txt").write_text("not audio")
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    save_image(noise, tmp_path / "big.png")
    values = [v.replace("{tmp}", str(tmp_path)) if isinstance(v, str) else v for v in inputs]
    with pytest.raises(gr.Error, match=message):
        list(demo.handlers.submit(*values, [], *settings))


def test_bad_settings_and_empty_retry_are_visible_errors(demo, settings):
    bad_top_p = [settings[0], 0.0, *settings[2:]]
    with pytest.raises(gr.Error, match="top_p must be in"):
        list(demo.handlers.submit("Hi", None, None, None, [], *bad_top_p))
    with pytest.raises(gr.Error, match="nothing to retry"):
        list(demo.handlers.retry([], *settings))


def test_a_failed_generation_keeps_the_history(demo, settings, monkeypatch):
    history = [Message("user", "Hi"), Message("assistant", "Hello")]

    def fail(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(demo.handlers.pipeline, "reply", fail)
    updates = demo.handlers.submit("Again", None, None, None, history, *settings)
    shown = []
    with pytest.raises(gr.Error, match="generation failed: out of memory"):
        for update in updates:
            shown.append(update[0])
    assert shown[-1] == render_chat(history)  # the page goes back to the last good state


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--checkpoint-dir", "{tmp}/none"], "has no config.yaml"), (["--max-upload-mb", "0"], "must be > 0")],
)
def test_demo_script_bad_input_is_one_line(tmp_path, capsys, extra, message):
    from nextgpt.cli import demo as demo_script

    argv = ["--checkpoint-dir", str(tmp_path), *[a.replace("{tmp}", str(tmp_path)) for a in extra]]
    assert demo_script.main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0]
