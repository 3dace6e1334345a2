"""The demo in a real headless browser (Debian's chromium driven by Playwright): an empty message does nothing (no red
"Error" badge), a bad upload shows a message, then a picture appears; Stop ends a running reply; examples and the
checkpoint's path are on the page; generated videos and sounds play inline in the chat.

`make browser` (run by CI) installs chromium when it is missing; Playwright's own browser downloads are never used.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from playwright.sync_api import expect, sync_playwright

from nextgpt.constants import Modality
from nextgpt.inference.media_io import save_audio, save_image, save_video
from nextgpt.inference.requests import Message
from nextgpt.serving.gradio_app import DEFAULT_EXAMPLES, DemoSettings, build_demo, launch_demo, render_chat
from nextgpt.serving.handlers import STOPPED_MESSAGE

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # no network beyond localhost
    "--disable-component-update",
    "--disable-sync",
]
UPLOAD_LIMIT_MB = 0.05
REPLY_TIMEOUT_MS = 180_000
IMAGE_REQUEST = "Please generate an image of a red circle on the left."
ERROR_BADGES = "[data-testid=status-tracker] .error"
"""The red "Error" label Gradio puts on every output component of an event that raised."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def demo_url(demo_pipeline, tmp_path_factory):
    settings = DemoSettings(port=_free_port(), max_upload_mb=UPLOAD_LIMIT_MB, output_dir=tmp_path_factory.mktemp("ui"))
    demo = launch_demo(build_demo(demo_pipeline, settings), settings, block=False)
    yield f"http://127.0.0.1:{settings.port}/"
    demo.close()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing; install it with `make browser` (apt-get install -y chromium)")
    # Playwright launches it with a fresh temporary profile (user data dir) of its own.
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.mark.numerics
def test_errors_show_then_an_uploaded_image_and_a_request_give_a_picture(
    demo_url, demo_pipeline, browser, tmp_path, keep_artifact
):
    red = np.full((64, 64, 3), 235, np.uint8)
    red[22:42, 6:26] = (220, 40, 40)
    small = save_image(red, tmp_path / "shape.png")
    big = save_image(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8), tmp_path / "big.png")
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(demo_url)
    errors = page.locator(".toast-body")
    # 1. An empty message does nothing: no toast, no red "Error" badge on the components, no chat entry.
    page.locator("#send").click()
    page.wait_for_timeout(1500)  # a refused event would have marked the components by now (local server)
    expect(page.locator(ERROR_BADGES)).to_have_count(0)
    expect(errors).to_have_count(0)
    expect(page.locator("#chat .message-row")).to_have_count(0)
    # 2. An oversized upload is refused with a visible message.
    upload = page.locator("#image-input input[type=file]")
    upload.set_input_files(str(big))
    expect(errors.filter(has_text="exceed the maximum allowed size")).to_be_visible()
    # 3. The app keeps serving: upload an image and ask for a picture.
    upload.set_input_files(str(small))
    expect(page.locator("#image-input img")).to_be_visible()
    page.get_by_placeholder("Ask, or request").fill(IMAGE_REQUEST)
    page.locator("#send").click()
    generated = page.locator("#chat .bot-row img").first
    expect(generated).to_be_visible(timeout=REPLY_TIMEOUT_MS)
    expect(page.locator("#chat .user-row img").first).to_be_visible()  # the upload is shown in the chat too
    expect(page.locator("#chat .message-row")).not_to_have_count(0)  # (the selector step 1 counted)
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=generated.element_handle())
    size = generated.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    decoder = demo_pipeline.cfg.model.decoders.image
    assert size == [decoder.width, decoder.height]
    page.evaluate("document.querySelectorAll('.toast-close').forEach(button => button.click())")
    expect(errors).to_have_count(0)  # dismissed, so the screenshot shows the whole page
    screenshot = keep_artifact("demo-chat.png")
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
    print(f"screenshot: {screenshot}")


def test_page_shows_the_checkpoint_and_examples_that_fill_the_prompt(demo_url, demo_pipeline, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(demo_url)
    expect(page.locator("#checkpoint")).to_contain_text(str(demo_pipeline.folder.absolute()))
    example = page.locator("#examples").get_by_text(DEFAULT_EXAMPLES[1])
    expect(example).to_be_visible()
    example.click()
    expect(page.get_by_placeholder("Ask, or request")).to_have_value(DEFAULT_EXAMPLES[1])


def test_stop_ends_a_running_reply(demo_url, demo_pipeline, browser):
    decoder = demo_pipeline.decoders.load(Modality.IMAGE)
    entered, release, calls = threading.Event(), threading.Event(), []
    unet_forward = decoder.pipeline.unet.forward

    def held_forward(*args, **kwargs):  # the first denoising step waits until the test has pressed Stop
        calls.append(1)
        entered.set()
        release.wait(60)
        return unet_forward(*args, **kwargs)

    decoder.pipeline.unet.forward = held_forward
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(demo_url)
        stop = page.locator("#stop")
        expect(stop).to_be_visible()
        page.get_by_placeholder("Ask, or request").fill(IMAGE_REQUEST)
        page.locator("#send").click()
        assert entered.wait(120), "the reply never reached the image decoder"
        stop.click()
        page.wait_for_timeout(500)  # Stop bypasses the queue; let it land before the step finishes
        release.set()
        expect(page.locator(".toast-body").filter(has_text=STOPPED_MESSAGE[:20])).to_be_visible(timeout=30_000)
    finally:
        release.set()
        decoder.pipeline.unet.forward = unet_forward
    assert len(calls) == 1  # no denoising step ran after Stop
    expect(page.locator("#chat .bot-row img")).to_have_count(0)
    expect(page.locator(ERROR_BADGES)).to_have_count(0)
    expect(page.get_by_placeholder("Ask, or request")).to_have_value(IMAGE_REQUEST)  # kept, to edit and resend


def test_generated_video_and_audio_play_inline(browser, tmp_path):
    frames = np.zeros((6, 32, 48, 3), np.uint8)
    frames[:, 8:24, 8:24] = (40, 80, 220)
    history = [
        Message("user", "A clip and a tone, please."),
        Message(
            "assistant",
            "Here you go.",
            {
                Modality.VIDEO: [save_video(frames, tmp_path / "clip.mp4")],
                Modality.AUDIO: [save_audio(np.zeros(16000, np.float32), tmp_path / "tone.wav", 16000)],
            },
        ),
    ]
    with gr.Blocks() as page_app:
        gr.Chatbot(value=render_chat(history), elem_id="chat")
    port = _free_port()
    page_app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, allowed_paths=[str(tmp_path)])
    try:
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{port}/")
        video = page.locator("#chat video").first
        expect(video).to_be_attached()
        page.wait_for_function("v => v.readyState >= 1", arg=video.element_handle())  # metadata decoded
        assert video.evaluate("v => [v.videoWidth, v.videoHeight]") == [48, 32]
        assert video.evaluate("v => v.duration") == pytest.approx(6 / 8, abs=0.05)
        expect(page.locator("#chat audio").first).to_be_attached()
    finally:
        page_app.close()
