"""The demo's handlers without a browser: a full reply with inline media, retry, clear, stop, and every bad input
(a toast and no change, never a raised error: that would put red "Error" badges on every output)."""

from __future__ import annotations

import threading
from pathlib import Path

import gradio as gr
import numpy as np
import pytest

from nextgpt.constants import Modality
from nextgpt.inference.media_io import save_image
from nextgpt.inference.requests import Message
from nextgpt.serving.gradio_app import ChatHandlers, DemoSettings, build_demo, render_chat
from nextgpt.serving.handlers import STOPPED_MESSAGE

SKIP = type(gr.skip())

IMAGE_REQUEST = "Please generate an image of a red circle on the left."


@pytest.fixture(scope="module")
def demo(demo_pipeline, tmp_path_factory):
    settings = DemoSettings(max_upload_mb=0.01, max_prompt_chars=200, output_dir=tmp_path_factory.mktemp("demo"))
    return build_demo(demo_pipeline, settings)


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


def _refused(updates) -> bool:
    """True when the handler changed nothing (every output skipped)."""
    (only,) = list(updates)
    return all(isinstance(value, SKIP) for value in only)


def test_an_empty_message_does_nothing(demo, settings, recwarn):
    assert _refused(demo.handlers.submit("   ", None, None, None, [], *settings))
    assert _refused(demo.handlers.submit(None, None, None, None, [], *settings))
    assert len(recwarn) == 0  # not even a toast


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (("Describe", "{tmp}/missing.png", None, None), "upload refused: image file .*missing.png not found"),
        (("Describe", None, None, "{tmp}/notes.txt"), "not a supported audio format"),
        (("Describe", "{tmp}/big.png", None, None), "over the 0.0 MB upload limit"),
        (("Describe", "{tmp}/broken.png", None, None), "broken.png does not decode as image"),
        (("Describe", None, "{tmp}/broken.mp4", None), "broken.mp4 does not decode as video"),
        (("x" * 201, None, None, None), "the message is 201 characters long; the limit is 200 .*--max-prompt-chars"),
    ],
)
def test_bad_input_is_a_toast_and_changes_nothing(demo, settings, tmp_path, inputs, message):
    (tmp_path / "notes.txt").write_text("not audio")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100)
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    save_image(noise, tmp_path / "big.png")
    values = [v.replace("{tmp}", str(tmp_path)) if isinstance(v, str) else v for v in inputs]
    with pytest.warns(UserWarning, match=message):
        assert _refused(demo.handlers.submit(*values, [], *settings))


def test_bad_settings_and_empty_retry_are_toasts(demo, settings):
    bad_top_p = [settings[0], 0.0, *settings[2:]]
    with pytest.warns(UserWarning, match="bad setting: generation.top_p must be in"):
        assert _refused(demo.handlers.submit("Hi", None, None, None, [], *bad_top_p))
    with pytest.warns(UserWarning, match="nothing to retry"):
        (update,) = list(demo.handlers.retry([], *settings))
    assert all(isinstance(value, SKIP) for value in update)


def test_a_failed_generation_keeps_the_history(demo, settings, monkeypatch):
    history = [Message("user", "Hi"), Message("assistant", "Hello")]

    def fail(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(demo.handlers.pipeline, "reply", fail)
    with pytest.warns(UserWarning, match="generation failed: out of memory"):
        updates = list(demo.handlers.submit("Again", None, None, None, history, *settings))
    assert updates[-1][0] == render_chat(history)  # the page goes back to the last good state
    assert isinstance(updates[-1][1], SKIP)  # and the history is not changed


def test_stop_ends_the_running_reply_at_the_next_step(demo, settings, capsys):
    handlers: ChatHandlers = demo.handlers
    decoder = handlers.pipeline.decoders.load(Modality.IMAGE)
    entered, release, calls = threading.Event(), threading.Event(), []
    unet_forward = decoder.pipeline.unet.forward

    def held_forward(*args, **kwargs):
        calls.append(1)
        entered.set()
        release.wait(30)
        return unet_forward(*args, **kwargs)

    decoder.pipeline.unet.forward = held_forward
    history: list[Message] = []
    files_before = sorted(demo.output_dir.iterdir())
    try:
        updates = []
        consumer = threading.Thread(
            target=lambda: updates.extend(handlers.submit(IMAGE_REQUEST, None, None, None, history, *settings))
        )
        consumer.start()
        assert entered.wait(60), "the reply never reached the image decoder"
        assert handlers.stop() is True  # pressed during the first denoising step
        release.set()
        consumer.join(60)
    finally:
        decoder.pipeline.unet.forward = unet_forward
    assert not consumer.is_alive() and len(calls) == 1  # no step after Stop
    assert updates[-1][0] == render_chat(history) and isinstance(updates[-1][1], SKIP)
    assert STOPPED_MESSAGE in capsys.readouterr().out  # gr.Info outside a page prints
    assert handlers.stop() is False  # nothing runs any more
    assert sorted(demo.output_dir.iterdir()) == files_before  # a stopped reply writes nothing


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--checkpoint-dir", "{tmp}/none"], "checkpoint folder"),
        (["--max-upload-mb", "0"], "--max-upload-mb must be a finite number > 0, got 0.0"),
        (["--max-prompt-chars", "0"], "--max-prompt-chars must be an integer >= 1"),
        (["--port", "70000"], "--port must be a TCP port"),
        (["--device", "gpu"], "device 'gpu' is not a torch device"),
        (["--output-dir", "{tmp}/file"], "is a file; pass a folder path"),
    ],
)
def test_demo_script_bad_input_is_one_line(tmp_path, capsys, extra, message):
    from nextgpt.cli import demo as demo_script

    (tmp_path / "file").write_text("x")
    argv = ["--checkpoint-dir", str(tmp_path), *[a.replace("{tmp}", str(tmp_path)) for a in extra]]
    assert demo_script.main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0]


def test_demo_is_local_unless_told_otherwise():
    from nextgpt.cli import demo as demo_script

    assert DemoSettings().host == "127.0.0.1"
    assert demo_script._build_parser().parse_args(["--checkpoint-dir", "x"]).host == "127.0.0.1"


@pytest.mark.slow
@pytest.mark.numerics
def test_the_demo_runs_the_tool_a_reply_chooses_and_shows_its_output(tool_checkpoint, tool_world, tmp_path):
    """A training request of the tool world: the reply chooses the shape counter; its count joins the reply."""
    from nextgpt.data.catalog import load_catalog
    from nextgpt.data.records import load_records
    from nextgpt.data.tool_records import group_tool_records
    from nextgpt.inference.pipeline import NextGPTPipeline
    from nextgpt.tiny.tools import count_shapes

    entry = load_catalog(tool_world)["tool_image"]
    examples, _ = group_tool_records(load_records(entry.annotation_path), entry)
    example = next(e for e in examples if e.right_tools == ["tiny/shape-counter"])
    pipeline = NextGPTPipeline.from_pretrained(tool_checkpoint, overrides=["generation.temperature=0"])
    settings = DemoSettings(output_dir=tmp_path, tools_path=tool_world.parent / "tools.json")
    handlers = build_demo(pipeline, settings).handlers
    cfg = pipeline.cfg
    values = [cfg.generation.temperature, cfg.generation.top_p, cfg.generation.max_new_tokens, cfg.generation.seed]
    values += [1.0, 2, 1.0, 2, 4, 1.0, 2, 1.0]
    chat, history, *_ = _last(handlers.submit(example.request, str(example.media), None, None, [], *values))
    reply = history[-1].text
    expected = f"Tool tiny/shape-counter (ran): {count_shapes('', [example.media])}"
    assert reply.startswith("{'api_name': tiny/shape-counter}") and reply.endswith(expected)
    assert any(message["content"] == reply for message in chat)
