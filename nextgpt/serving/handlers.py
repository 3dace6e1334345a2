"""The demo's event handlers: a thin layer over `NextGPTPipeline` that the page calls (and tests call directly).

Bad input never raises into Gradio: a raised error marks every output component with a red "Error" badge, so
refusals are toasts (`gr.Warning`) and the outputs are left as they were. An empty message does nothing. Uploads
are checked like predict.py's inputs (they must decode); an over-long message is refused at once instead of holding
the one-at-a-time queue while the LLM reads it. Stop sets the session's cancel event, which the running reply checks
at every token and every denoising step.

    handlers = ChatHandlers(pipeline, Path("/tmp/demo"), max_upload_bytes=50 << 20, max_prompt_chars=4000)
    for chat, history, *inputs in handlers.submit("Draw a cat.", None, None, None, [], *settings):
        ...  # streamed chat updates, then the new history
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import gradio as gr
from transformers import TextIteratorStreamer

from nextgpt.config import ConfigError, GenerationConfig
from nextgpt.constants import MODALITIES, Modality
from nextgpt.inference.input_checks import probe_media_file
from nextgpt.inference.pipeline import DecoderOptions, GenerationCancelled, NextGPTPipeline
from nextgpt.inference.requests import Message, check_conversation

logger = logging.getLogger(__name__)

STREAM_TIMEOUT_S = 600.0
"""Longest wait for the next streamed text piece before the reply is abandoned."""
STOPPED_MESSAGE = "Stopped. The reply was discarded; edit the message or send it again."
LOCAL_SESSION = "local"
"""Session key when a handler is called without a browser (tests, scripts)."""


class Refused(Exception):
    """Input the demo will not answer; the message is shown as a toast, and nothing else changes."""


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


def session_of(request: gr.Request | None) -> str:
    """The browser session's key (one tab), so Stop stops only its own reply."""
    return getattr(request, "session_hash", None) or LOCAL_SESSION


class ChatHandlers:
    """The demo's event handlers (also callable without a browser).

    Args:
        pipeline: the loaded inference pipeline.
        output_dir: where generated media go.
        max_upload_bytes: per-file limit for uploads.
        max_prompt_chars: longest message accepted.
        tools: a `ToolRegistry`: the tool a reply chooses runs on the user's media, its output joins the reply.
    """

    def __init__(
        self,
        pipeline: NextGPTPipeline,
        output_dir: Path,
        max_upload_bytes: int,
        max_prompt_chars: int,
        tools: Any = None,
    ):
        self.pipeline = pipeline
        self.tools = tools
        self.output_dir = Path(output_dir)
        self.max_upload_bytes = max_upload_bytes
        self.max_prompt_chars = max_prompt_chars
        self._running: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def options(self, values: Sequence[Any]) -> tuple[GenerationConfig, dict[Modality, DecoderOptions]]:
        """Settings-panel values (in `build_settings` order) → text and decoder options.

        Raises:
            Refused: an invalid value.
        """
        temperature, top_p, max_new_tokens, seed, *media = values
        image_guidance, image_steps, video_guidance, video_steps, frames, audio_guidance, audio_steps, seconds = media
        try:
            generation = self.pipeline.generation_config(
                temperature=float(temperature), top_p=float(top_p), max_new_tokens=int(max_new_tokens), seed=int(seed)
            )
            decoders = {
                Modality.IMAGE: DecoderOptions(
                    num_inference_steps=int(image_steps), guidance_scale=float(image_guidance)
                ),
                Modality.VIDEO: DecoderOptions(
                    num_inference_steps=int(video_steps), guidance_scale=float(video_guidance), num_frames=int(frames)
                ),
                Modality.AUDIO: DecoderOptions(
                    num_inference_steps=int(audio_steps),
                    guidance_scale=float(audio_guidance),
                    audio_seconds=float(seconds),
                ),
            }
            for modality, option in decoders.items():
                option.check(modality)
        except (ConfigError, ValueError, TypeError) as err:
            raise Refused(f"bad setting: {err}") from None
        return generation, decoders

    def user_message(self, text: str | None, image: str | None, video: str | None, audio: str | None) -> Message:
        """The user's message from the input widgets, with its length and every upload checked.

        Raises:
            Refused: an over-long message, or a missing, unsupported, oversized or undecodable file.
        """
        text = text or ""
        if len(text) > self.max_prompt_chars:
            raise Refused(
                f"the message is {len(text):,} characters long; the limit is {self.max_prompt_chars:,} "
                "(demo.py --max-prompt-chars); shorten it"
            )
        media: dict[Modality, list[Path]] = {}
        for modality, path in ((Modality.IMAGE, image), (Modality.VIDEO, video), (Modality.AUDIO, audio)):
            if path:
                try:
                    media[modality] = [probe_media_file(Path(path), modality, self.max_upload_bytes)]
                except (FileNotFoundError, ValueError) as err:
                    raise Refused(f"upload refused: {err}") from None
        return Message("user", text, media)

    def submit(
        self,
        text: str | None,
        image: str | None,
        video: str | None,
        audio: str | None,
        history: list,
        *settings: Any,
        session: str = LOCAL_SESSION,
    ) -> Iterator[tuple]:
        """Answer the typed message (streaming); outputs: chatbot, history, text box, image, video, audio.

        An empty message (no text, no file) does nothing; refused input shows a toast and changes nothing.
        """
        skip_all = (gr.skip(),) * 6
        if not (text or "").strip() and not (image or video or audio):
            yield skip_all
            return
        try:
            user = self.user_message(text, image, video, audio)
            generation, decoders = self.options(settings)
        except Refused as err:
            gr.Warning(str(err))
            yield skip_all
            return
        for shown, new_history in self._answer(list(history), user, generation, decoders, session):
            if new_history is None:
                yield shown, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            else:
                yield shown, new_history, "", None, None, None

    def retry(self, history: list, *settings: Any, session: str = LOCAL_SESSION) -> Iterator[tuple]:
        """Answer the last user message again with the current settings; outputs: chatbot, history."""
        if len(history) < 2 or history[-1].role != "assistant":
            gr.Warning("nothing to retry yet; send a message first")
            yield gr.skip(), gr.skip()
            return
        try:
            generation, decoders = self.options(settings)
        except Refused as err:
            gr.Warning(str(err))
            yield gr.skip(), gr.skip()
            return
        answers = self._answer(list(history[:-2]), history[-2], generation, decoders, session)
        for shown, new_history in answers:
            yield shown, gr.skip() if new_history is None else new_history

    def stop(self, session: str = LOCAL_SESSION) -> bool:
        """Stop this session's running reply (at the next token or denoising step).

        Returns:
            Whether a reply was running.
        """
        with self._lock:
            cancel = self._running.get(session)
        if cancel is not None:
            cancel.set()
        return cancel is not None

    def clear(self) -> tuple:
        """Empty chat and inputs; outputs: chatbot, history, text box, image, video, audio."""
        return [], [], "", None, None, None

    def _answer(
        self,
        history: list[Message],
        user: Message,
        generation: GenerationConfig,
        decoders: dict[Modality, DecoderOptions],
        session: str,
    ) -> Iterator[tuple]:
        """Yield (chatbot, None) while the reply streams, then (chatbot, new history) or, when stopped or failed,
        (chatbot as before, None)."""
        messages = [*history, user]
        try:
            check_conversation(messages)
            generation = self.pipeline.fit_to_context(messages, generation)
        except ValueError as err:
            gr.Warning(str(err))
            yield render_chat(history), None
            return
        streamer = TextIteratorStreamer(
            self.pipeline.model.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=STREAM_TIMEOUT_S
        )
        cancel = threading.Event()
        with self._lock:
            self._running[session] = cancel
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                prefix = uuid.uuid4().hex[:10]
                outcome["reply"] = self.pipeline.reply(
                    messages, self.output_dir, prefix, generation, decoders, streamer, cancel=cancel
                )
            except Exception as err:  # reported in the page below; the app keeps serving
                outcome["error"] = err
            finally:
                streamer.end()  # unblocks the loop below even when generation failed before streaming

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        try:
            shown, partial = render_chat(messages), ""
            for piece in streamer:
                partial += piece
                yield [*shown, {"role": "assistant", "content": partial or "…"}], None
            worker.join()
        finally:
            cancel.set()  # the page went away (generator closed): stop the worker too
            with self._lock:
                if self._running.get(session) is cancel:
                    del self._running[session]
        yield from self._finish(history, messages, outcome)

    def _with_tool_output(self, user: Message, answer: Message) -> Message:
        """The reply with the chosen tool's outcome appended: its text output, or the files it wrote, or why it did not
        run (an id outside the library is shown, never run)."""
        from nextgpt.inference.media_io import modality_of_file
        from nextgpt.tools.answers import parse_tool_answer

        inputs = [(m, Path(p)) for m, paths in user.media.items() for p in paths]
        run = self.tools.run(
            parse_tool_answer(answer.text).first, user.text, inputs, self.output_dir, uuid.uuid4().hex[:10]
        )
        media = {m: list(paths) for m, paths in answer.media.items()}
        for path in run.files:
            media.setdefault(modality_of_file(path), []).append(path)
        shown = run.text if run.text is not None else run.message
        return Message("assistant", f"{answer.text}\n\nTool {run.tool or '-'} ({run.status}): {shown}", media)

    def _finish(self, history: list[Message], messages: list[Message], outcome: dict[str, Any]) -> Iterator[tuple]:
        error = outcome.get("error")
        if isinstance(error, GenerationCancelled):
            gr.Info(STOPPED_MESSAGE)
            yield render_chat(history), None
            return
        if error is not None:
            if not isinstance(error, (FileNotFoundError, ValueError)):
                logger.error("generation failed", exc_info=error)
            gr.Warning(f"generation failed: {error}")
            yield render_chat(history), None
            return
        reply = outcome["reply"]
        for problem in reply.result.problems:
            gr.Warning(problem)
        message = reply.message if self.tools is None else self._with_tool_output(messages[-1], reply.message)
        new_history = [*messages, message]
        yield render_chat(new_history), new_history
