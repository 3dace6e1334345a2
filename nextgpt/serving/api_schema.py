"""The request body of `POST /v1/chat/completions` and its options, checked against their valid ranges.

The body is OpenAI's (`model`, `messages`, `stream`, `max_tokens` / `max_completion_tokens`, `temperature`, `top_p`,
`seed`, `n`, `stream_options`) plus NExT-GPT's decoder options, sent as extra top-level fields (the `openai` client's
`extra_body`): `guidance_scale`, `num_inference_steps`, `num_frames`, `audio_seconds`, `modalities`, the outputs
a reply may render (`["text", "image", "video", "audio"]`, OpenAI's field, widened), and `ignore_eos` (vLLM's:
replies of exactly `max_tokens` tokens, for load tests). `tools` / `tool_choice` are
OpenAI's (`nextgpt.serving.tool_calls`). Unknown fields are refused, so a
typo never silently falls back to a default. A value out of range is refused with one line naming the field and the
range.

    request = ChatRequest.model_validate(body)
    settings = request_settings(request, pipeline, config)   # generation config, decoder options, allowed outputs
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from nextgpt.config import GenerationConfig
from nextgpt.constants import MODALITIES, Modality
from nextgpt.inference.decoder_pool import DecoderOptions
from nextgpt.inference.pipeline import NextGPTPipeline
from nextgpt.serving.api_config import ServeConfig
from nextgpt.serving.api_errors import ApiError

OUTPUT_NAMES = ("text", *(m.value for m in MODALITIES))


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class ChatRequest(BaseModel):
    """An OpenAI chat-completions request with NExT-GPT's decoder options (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="Ignored beyond a check: the server serves one model.")
    messages: list[dict[str, Any]] = Field(
        description="user / assistant messages; content is a string or a list of parts: text, image_url, video_url "
        "(data: URI or file:// URL inside --media-root), input_audio {data, format}, audio_url"
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, description="reply length limit, [1, the LLM's context]")
    max_completion_tokens: int | None = Field(None, description="same as max_tokens (OpenAI's newer name)")
    temperature: float | None = Field(None, description="[0, 2]; 0 is greedy")
    top_p: float | None = Field(None, description="(0, 1]")
    seed: int | None = Field(None, description="[0, 2**63); seeds the text sampling and the decoders' noise")
    n: int | None = Field(None, description="must be 1")
    user: str | None = None
    modalities: list[str] | None = Field(None, description=f"outputs the reply may render, from {list(OUTPUT_NAMES)}")
    guidance_scale: float | None = Field(None, description="decoders' classifier-free guidance, [0, 50]")
    num_inference_steps: int | None = Field(None, description="denoising steps, [1, --max-inference-steps]")
    num_frames: int | None = Field(None, description="video frames, [1, --max-frames]")
    audio_seconds: float | None = Field(None, description="audio clip length, (0, --max-audio-seconds]")
    ignore_eos: bool | None = Field(None, description="decode max_tokens tokens even past the end of the reply")
    tools: list[dict[str, Any]] | None = Field(
        None, description="OpenAI function tools: a reply choosing one of them comes back as tool_calls"
    )
    tool_choice: str | dict[str, Any] | None = Field(None, description='"none" turns tool calls off; else ignored')


@dataclass
class RequestSettings:
    """What a request asks of the pipeline."""

    generation: GenerationConfig
    decoder_options: dict[Modality, DecoderOptions]
    outputs: tuple[Modality, ...]
    """Modalities the reply may render; spans of others are reported, not rendered."""


def _check_range(name: str, value: float | None, low: float, high: float, low_open: bool = False) -> None:
    if value is None:
        return
    below = value <= low if low_open else value < low
    if not math.isfinite(value) or below or value > high:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise ApiError(400, f"{name} must be in {interval}, got {value}", name)


def request_settings(request: ChatRequest, pipeline: NextGPTPipeline, config: ServeConfig) -> RequestSettings:
    """Check every option's range and map them onto the pipeline's settings (unset ones keep the checkpoint's).

    Raises:
        ApiError: 400 naming the field and its valid range.
    """
    if request.n not in (None, 1):
        raise ApiError(400, f"n must be 1 (one reply per request), got {request.n}", "n")
    context = int(pipeline.model.llm.config.max_position_embeddings)
    if request.max_tokens is not None and request.max_completion_tokens is not None:
        raise ApiError(400, "give max_tokens or max_completion_tokens, not both", "max_tokens")
    name = "max_tokens" if request.max_tokens is not None else "max_completion_tokens"
    max_tokens = request.max_tokens if request.max_tokens is not None else request.max_completion_tokens
    _check_range(name, max_tokens, 1, context)
    _check_range("temperature", request.temperature, 0, 2)
    _check_range("top_p", request.top_p, 0, 1, low_open=True)
    _check_range("seed", request.seed, 0, 2**63 - 1)
    _check_range("guidance_scale", request.guidance_scale, 0, 50)
    _check_range("num_inference_steps", request.num_inference_steps, 1, config.max_inference_steps)
    _check_range("num_frames", request.num_frames, 1, config.max_frames)
    _check_range("audio_seconds", request.audio_seconds, 0, config.max_audio_seconds, low_open=True)
    names = request.modalities if request.modalities is not None else list(OUTPUT_NAMES)
    unknown = [n for n in names if n not in OUTPUT_NAMES]
    if unknown:
        raise ApiError(400, f"modalities holds {unknown}; choose from {list(OUTPUT_NAMES)}", "modalities")
    generation = pipeline.generation_config(
        max_new_tokens=max_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        seed=request.seed,
        ignore_eos=request.ignore_eos,
    )
    shared = {"num_inference_steps": request.num_inference_steps, "guidance_scale": request.guidance_scale}
    options = {
        Modality.IMAGE: DecoderOptions(**shared),
        Modality.VIDEO: DecoderOptions(**shared, num_frames=request.num_frames),
        Modality.AUDIO: DecoderOptions(**shared, audio_seconds=request.audio_seconds),
    }
    outputs = tuple(m for m in MODALITIES if m.value in names)
    return RequestSettings(generation, options, outputs)
