"""The Gradio chat demo: the page layout over `nextgpt.serving.handlers.ChatHandlers` (no model logic here).

Chat with history; image / video / audio uploads; generated media shown inline in the chat; the original demo's
settings panels (text, image, video, audio); Stop, Retry and Clear; example prompts; the checkpoint's path on the page.
Refused input (an over-long message, a bad upload) shows as a toast and the app keeps serving; an empty message does
nothing.

    pipeline = NextGPTPipeline.from_pretrained(Path("runs/stage_3/final"), device="cuda")
    settings = DemoSettings(max_upload_mb=50, max_prompt_chars=4000)
    launch_demo(build_demo(pipeline, settings), settings)  # serves http://127.0.0.1:7860 until interrupted
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from nextgpt.config import Config
from nextgpt.constants import Modality
from nextgpt.inference.pipeline import NextGPTPipeline
from nextgpt.serving.handlers import ChatHandlers, render_chat, session_of

__all__ = ["ChatDemo", "ChatHandlers", "DemoSettings", "build_demo", "launch_demo", "render_chat"]

logger = logging.getLogger(__name__)

_BYTES_PER_MB = 1024 * 1024
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
DEFAULT_EXAMPLES = (
    "Please generate an image of a red circle on the left.",
    "Please generate a video of a blue square moving up.",
    "Please generate a sound of a steady low tone.",
    "What can you do?",
)
"""Prompts offered under the chat. The repository ships no media files, so no example carries an upload; examples
with files can be passed in `DemoSettings.examples` and are shown when their files exist."""


@dataclass
class DemoSettings:
    """How the demo is served.

    Attributes:
        host: interface to bind; 127.0.0.1 keeps the demo local.
        port: TCP port; None lets Gradio pick a free one from 7860.
        share: open a public Gradio share link (opt-in).
        max_upload_mb: per-file upload limit.
        max_prompt_chars: longest message accepted (longer ones are refused at once instead of holding the queue).
        output_dir: where generated media are written; None uses a fresh temporary folder.
        tools_path: a tool library JSON: the tool each reply chooses runs on the user's media and its output is shown
            under the reply (`nextgpt.tools.registry`).
        title: page heading.
        examples: example prompts: a text, or (text, image, video, audio) with None for no file.
    """

    host: str = "127.0.0.1"
    port: int | None = 7860
    share: bool = False
    max_upload_mb: float = 50.0
    max_prompt_chars: int = 4000
    output_dir: Path | None = None
    tools_path: Path | None = None
    title: str = "NExT-GPT: any-to-any chat"
    examples: tuple[str | tuple[str, str | None, str | None, str | None], ...] = field(
        default_factory=lambda: DEFAULT_EXAMPLES
    )


def _slider_range(low: float, high: float, default: float) -> tuple[float, float]:
    """The original demo's slider range, widened to hold the checkpoint's default."""
    return min(low, default), max(high, default)


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


def _example_rows(examples: tuple) -> list[list[Any]]:
    """Example rows for (text, image, video, audio); rows whose files are missing are left out with a warning."""
    rows = []
    for example in examples:
        row = [example, None, None, None] if isinstance(example, str) else list(example)
        missing = [path for path in row[1:] if path is not None and not Path(path).is_file()]
        if missing:
            logger.warning("example %r left out: %s not found", row[0], ", ".join(map(str, missing)))
            continue
        rows.append(row)
    return rows


def _session_events(handlers: ChatHandlers) -> tuple[Callable, Callable, Callable]:
    """submit, retry and stop as Gradio events that know the browser tab they come from.

    Gradio passes the request only to a leading positional parameter annotated `gr.Request`; its session key ties
    Stop to the reply of the same tab.
    """

    def submit(request: gr.Request, *values: Any) -> Iterator[tuple]:
        yield from handlers.submit(*values, session=session_of(request))

    def retry(request: gr.Request, *values: Any) -> Iterator[tuple]:
        yield from handlers.retry(*values, session=session_of(request))

    def stop(request: gr.Request) -> None:
        handlers.stop(session_of(request))

    return submit, retry, stop


def build_demo(pipeline: NextGPTPipeline, settings: DemoSettings) -> ChatDemo:
    """Lay out the chat page and wire its events.

    Args:
        pipeline: the loaded inference pipeline.
        settings: upload and prompt limits, output folder, title, examples.

    Returns:
        The demo, not yet launched.
    """
    output_dir = settings.output_dir or Path(tempfile.mkdtemp(prefix="nextgpt-demo-"))
    output_dir.mkdir(parents=True, exist_ok=True)
    tools = None
    if settings.tools_path is not None:
        from nextgpt.tools.library import load_tool_library
        from nextgpt.tools.registry import ToolRegistry

        tools = ToolRegistry(load_tool_library(settings.tools_path), decoders=pipeline.decoders)
    handlers = ChatHandlers(
        pipeline, output_dir, int(settings.max_upload_mb * _BYTES_PER_MB), settings.max_prompt_chars, tools
    )

    submit, retry, stop = _session_events(handlers)
    checkpoint = pipeline.folder.absolute() if pipeline.folder is not None else "(built in memory)"
    with gr.Blocks(title=settings.title) as demo:
        gr.Markdown(f"## {settings.title}")
        gr.Markdown(f"Checkpoint: `{checkpoint}`", elem_id="checkpoint")
        history = gr.State([])
        with gr.Row():
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(label="Chat", height=520, elem_id="chat")
                with gr.Row():
                    text = gr.Textbox(
                        placeholder="Ask, or request an image, video or sound",
                        show_label=False,
                        scale=5,
                        max_length=settings.max_prompt_chars,
                        elem_id="prompt",
                    )
                    send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
                    stop_button = gr.Button("Stop", variant="stop", scale=1, elem_id="stop")
                with gr.Row():
                    image = gr.Image(type="filepath", label="Image", elem_id="image-input")
                    video = gr.Video(label="Video", elem_id="video-input")
                    audio = gr.Audio(type="filepath", label="Audio", elem_id="audio-input")
                with gr.Row():
                    retry_button = gr.Button("Retry", elem_id="retry")
                    clear = gr.Button("Clear", elem_id="clear")
                inputs = [text, image, video, audio]
                rows = _example_rows(settings.examples)
                with_media = any(value is not None for row in rows for value in row[1:])
                example_inputs = inputs if with_media else [text]
                rows = rows if with_media else [row[:1] for row in rows]
                gr.Examples(rows, example_inputs, label="Examples", elem_id="examples")
            with gr.Column(scale=1):
                controls = build_settings(pipeline.cfg)
        chat_outputs = [chatbot, history, *inputs]
        for trigger in (send.click, text.submit):
            trigger(submit, [*inputs, history, *controls], chat_outputs, show_progress="minimal")
        retry_button.click(retry, [history, *controls], [chatbot, history], show_progress="minimal")
        # Outside the queue: the queue answers one request at a time and is busy with the reply to stop.
        stop_button.click(stop, None, None, queue=False)
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
    if settings.host not in LOCAL_HOSTS:
        logger.warning("serving on %s: anyone who can reach this machine can use the model", settings.host)
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
