"""The Gradio chat demo: a thin UI over `NextGPTPipeline` (no model logic here).

Chat with history; image / video / audio uploads; generated media shown inline in the chat; the original demo's
settings panels (text, image, video, audio); retry and clear. Bad input (empty prompt, unsupported or oversized file)
and generation failures show as an error message in the page, and the app keeps serving.

    pipeline = NextGPTPipeline.from_pretrained(Path("runs/stage_3/final"), device="cuda")
    settings = DemoSettings(max_upload_mb=50)
    launch_demo(build_demo(pipeline, settings), settings)  # serves http://127.0.0.1:7860 until interrupted
"""

from __future__ import annotations

import logging
import tempfile
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from transformers import TextIteratorStreamer

from nextgpt.config import Config, GenerationConfig
from nextgpt.constants import MODALITIES, Modality
from nextgpt.inference.media_io import check_input_file
from nextgpt.inference.pipeline import DecoderOptions, NextGPTPipeline
from nextgpt.inference.requests import Message, check_conversation

logger = logging.getLogger(__name__)

_BYTES_PER_MB = 1024 * 1024
STREAM_TIMEOUT_S = 600.0
"""Longest wait for the next streamed text piece before the reply is abandoned."""


@dataclass
class DemoSettings:
    """How the demo is served.

    Attributes:
        host: interface to bind; 127.0.0.1 keeps the demo local.
        port: TCP port; None lets Gradio pick a free one from 7860.
        share: open a public Gradio share link (opt-in).
        max_upload_mb: per-file upload limit.
        output_dir: where generated media are written; None uses a fresh temporary folder.
        title: page heading.
    """

    host: str = "127.0.0.1"
    port: int | None = 7860
    share: bool = False
    max_upload_mb: float = 50.0
    output_dir: Path | None = None
    title: str = "NExT-GPT: any-to-any chat"


def render_chat(history: Sequence[Message]) -> list[dict[str, Any]]:
    """Chatbot messages for a conversation: each text, then each file (shown inline by its type).

    Args:
        history: the conversation.

    Returns:
        Gradio "messages" entries.
    """
    rendered: list[dict[str, Any]] = []
    for message in history:
        if message.text.strip():
            rendered.append({"role": message.role, "content": message.text})
        for modality in MODALITIES:
            for path in message.media.get(modality, ()):
                rendered.append({"role": message.role, "content": {"path": str(path)}})
        if message.role == "assistant" and not message.text.strip() and not any(message.media.values()):
            rendered.append({"role": "assistant", "content": "(empty reply)"})
    return rendered


def _slider_range(low: float, high: float, default: float) -> tuple[float, float]:
    """The original demo's slider range, widened to hold the checkpoint's default."""
    return min(low, default), max(high, default)


class ChatHandlers:
    """The demo's event handlers (also callable without a browser).

    Args:
        pipeline: the loaded inference pipeline.
        output_dir: where generated media go.
        max_upload_bytes: per-file limit for uploads.
    """

    def __init__(self, pipeline: NextGPTPipeline, output_dir: Path, max_upload_bytes: int):
        self.pipeline = pipeline
        self.output_dir = Path(output_dir)
        self.max_upload_bytes = max_upload_bytes

    def options(self, values: Sequence[Any]) -> tuple[GenerationConfig, dict[Modality, DecoderOptions]]:
        """Settings-panel values (in `build_settings` order) → text and decoder options.

        Raises:
            gr.Error: an invalid value.
        """
        temperature, top_p, max_new_tokens, seed, *media = values
        image_guidance, image_steps, video_guidance, video_steps, frames, audio_guidance, audio_steps, seconds = media
        try:
            generation = self.pipeline.generation_config(
                temperature=float(temperature), top_p=float(top_p), max_new_tokens=int(max_new_tokens), seed=int(seed)
            )
        except ValueError as err:
            raise gr.Error(str(err), print_exception=False) from err
        decoders = {
            Modality.IMAGE: DecoderOptions(num_inference_steps=int(image_steps), guidance_scale=float(image_guidance)),
            Modality.VIDEO: DecoderOptions(
                num_inference_steps=int(video_steps), guidance_scale=float(video_guidance), num_frames=int(frames)
            ),
            Modality.AUDIO: DecoderOptions(
                num_inference_steps=int(audio_steps), guidance_scale=float(audio_guidance), audio_seconds=float(seconds)
            ),
        }
        return generation, decoders

    def user_message(self, text: str | None, image: str | None, video: str | None, audio: str | None) -> Message:
        """The user's message from the input widgets, with every file checked.

        Raises:
            gr.Error: a missing, unsupported or oversized file.
        """
        media: dict[Modality, list[Path]] = {}
        for modality, path in ((Modality.IMAGE, image), (Modality.VIDEO, video), (Modality.AUDIO, audio)):
            if path:
                try:
                    media[modality] = [check_input_file(Path(path), modality, self.max_upload_bytes)]
                except (FileNotFoundError, ValueError) as err:
                    raise gr.Error(str(err), print_exception=False) from err
        return Message("user", text or "", media)

    def submit(
        self, text: str | None, image: str | None, video: str | None, audio: str | None, history: list, *settings: Any
    ) -> Iterator[tuple]:
        """Answer the typed message (streaming); outputs: chatbot, history, text box, image, video, audio.

        Raises:
            gr.Error: bad input or a failed generation (the history is left as it was).
        """
        user = self.user_message(text, image, video, audio)
        for shown, new_history in self._answer(list(history), user, settings):
            if new_history is None:
                yield shown, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            else:
                yield shown, new_history, "", None, None, None

    def retry(self, history: list, *settings: Any) -> Iterator[tuple]:
        """Answer the last user message again with the current settings; outputs: chatbot, history.

        Raises:
            gr.Error: nothing to retry, or a failed generation.
        """
        if len(history) < 2 or history[-1].role != "assistant":
            raise gr.Error("nothing to retry yet; send a message first", print_exception=False)
        for shown, new_history in self._answer(list(history[:-2]), history[-2], settings):
            yield shown, gr.skip() if new_history is None else new_history

    def clear(self) -> tuple:
        """Empty chat and inputs; outputs: chatbot, history, text box, image, video, audio."""
        return [], [], "", None, None, None

    def _answer(self, history: list[Message], user: Message, settings: Sequence[Any]) -> Iterator[tuple]:
        """Yield (chatbot, None) while the reply streams, then (chatbot, new history)."""
        generation, decoders = self.options(settings)
        messages = [*history, user]
        try:
            check_conversation(messages)
        except ValueError as err:
            raise gr.Error(str(err), print_exception=False) from err
        streamer = TextIteratorStreamer(
            self.pipeline.model.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=STREAM_TIMEOUT_S
        )
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                prefix = uuid.uuid4().hex[:10]
                outcome["reply"] = self.pipeline.reply(
                    messages, self.output_dir, prefix, generation, decoders, streamer
                )
            except Exception as err:  # reported in the page below; the app keeps serving
                outcome["error"] = err
            finally:
                streamer.end()  # unblocks the loop below even when generation failed before streaming

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        shown = render_chat(messages)
        partial = ""
        for piece in streamer:
            partial += piece
            yield [*shown, {"role": "assistant", "content": partial or "…"}], None
        worker.join()
        if "error" in outcome:
            err = outcome["error"]
            if not isinstance(err, (FileNotFoundError, ValueError)):
                logger.error("generation failed", exc_info=err)
            yield render_chat(history), None
            raise gr.Error(f"generation failed: {err}", print_exception=False)
        reply = outcome["reply"]
        for problem in reply.result.problems:
            gr.Warning(problem)
        new_history = [*messages, reply.message]
        yield render_chat(new_history), new_history


def build_settings(cfg: Config) -> list[gr.components.Component]:
    """The settings panels (original demo's set; defaults from the checkpoint's config), in `options` order.

    Args:
        cfg: the checkpoint's `Config`.

    Returns:
        Text: temperature, top_p, max new tokens, seed; image: guidance, steps; video: guidance, steps, frames;
        audio: guidance, steps, seconds.
    """
    generation, decoders = cfg.generation, cfg.model.decoders
    with gr.Accordion("Text", open=False):
        controls = [
            gr.Slider(0.0, 1.0, value=generation.temperature, step=0.01, label="Temperature (0 = greedy)"),
            gr.Slider(0.01, 1.0, value=generation.top_p, step=0.01, label="Top p"),
            gr.Slider(
                1, max(1024, generation.max_new_tokens), value=generation.max_new_tokens, step=1, label="Max new tokens"
            ),
            gr.Number(value=generation.seed, precision=0, label="Seed"),
        ]
    for modality, title in ((Modality.IMAGE, "Image"), (Modality.VIDEO, "Video"), (Modality.AUDIO, "Audio")):
        decoder = getattr(decoders, modality.value)
        with gr.Accordion(title, open=False):
            low, high = _slider_range(1.0, 10.0, decoder.guidance_scale)
            controls.append(gr.Slider(low, high, value=decoder.guidance_scale, step=0.5, label="Guidance scale"))
            low, high = _slider_range(10, 50, decoder.num_inference_steps)
            controls.append(gr.Slider(low, high, value=decoder.num_inference_steps, step=1, label="Steps"))
            if modality is Modality.VIDEO:
                low, high = _slider_range(16, 32, decoder.num_frames)
                step = 8 if decoder.num_frames % 8 == 0 else 1
                controls.append(gr.Slider(low, high, value=decoder.num_frames, step=step, label="Frames"))
            if modality is Modality.AUDIO:
                low, high = _slider_range(1.0, 9.0, decoder.audio_seconds)
                controls.append(gr.Slider(low, high, value=decoder.audio_seconds, step=0.5, label="Length (s)"))
    return controls


@dataclass
class ChatDemo:
    """The built page and what serves it.

    Attributes:
        blocks: the Gradio app.
        handlers: its event handlers (callable without a browser).
        output_dir: where generated media are written (served to the page).
    """

    blocks: gr.Blocks
    handlers: ChatHandlers
    output_dir: Path

    def close(self) -> None:
        """Stop serving."""
        self.blocks.close()


def build_demo(pipeline: NextGPTPipeline, settings: DemoSettings) -> ChatDemo:
    """Lay out the chat page and wire its events.

    Args:
        pipeline: the loaded inference pipeline.
        settings: upload limit, output folder, title.

    Returns:
        The demo, not yet launched.
    """
    output_dir = settings.output_dir or Path(tempfile.mkdtemp(prefix="nextgpt-demo-"))
    output_dir.mkdir(parents=True, exist_ok=True)
    handlers = ChatHandlers(pipeline, output_dir, int(settings.max_upload_mb * _BYTES_PER_MB))
    with gr.Blocks(title=settings.title) as demo:
        gr.Markdown(f"## {settings.title}")
        history = gr.State([])
        with gr.Row():
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(label="Chat", height=520, elem_id="chat")
                with gr.Row():
                    text = gr.Textbox(placeholder="Ask, or request an image, video or sound", show_label=False, scale=5)
                    send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
                with gr.Row():
                    image = gr.Image(type="filepath", label="Image", elem_id="image-input")
                    video = gr.Video(label="Video", elem_id="video-input")
                    audio = gr.Audio(type="filepath", label="Audio", elem_id="audio-input")
                with gr.Row():
                    retry = gr.Button("Retry", elem_id="retry")
                    clear = gr.Button("Clear", elem_id="clear")
            with gr.Column(scale=1):
                controls = build_settings(pipeline.cfg)
        inputs = [text, image, video, audio]
        chat_outputs = [chatbot, history, *inputs]
        for trigger in (send.click, text.submit):
            trigger(handlers.submit, [*inputs, history, *controls], chat_outputs, show_progress="minimal")
        retry.click(handlers.retry, [history, *controls], [chatbot, history], show_progress="minimal")
        clear.click(handlers.clear, [], chat_outputs)
    return ChatDemo(demo, handlers, output_dir)


def launch_demo(demo: ChatDemo, settings: DemoSettings, block: bool = True) -> ChatDemo:
    """Serve the demo (queued: one reply at a time, since the model is shared).

    Args:
        demo: from `build_demo`.
        settings: host, port, share link, upload limit.
        block: keep serving until interrupted; False returns at once (call `demo.close()` to stop).

    Returns:
        The running demo.
    """
    if settings.share:
        logger.warning("share=True opens a public link to this demo; anyone with it can use the model")
    demo.blocks.queue(default_concurrency_limit=1).launch(
        server_name=settings.host,
        server_port=settings.port,
        share=settings.share,
        max_file_size=int(settings.max_upload_mb * _BYTES_PER_MB),
        allowed_paths=[str(demo.output_dir)],
        show_error=True,
        prevent_thread_lock=not block,
    )
    return demo
