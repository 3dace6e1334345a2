"""Prompt -> PNG latency and inference memory with all three decoders in low-memory mode.

Prompt -> PNG follows `generate_reply`: build the prompt, decode the reply, re-read the hidden states of the
reply's image signal span in one teacher-forced pass, project them, render with the image decoder, encode the PNG.
A random LLM never emits signal tokens by itself, so the decoded reply gets the image span appended (what a trained
model emits at its end); everything else is the real path.

    result = run_png_section(model, decoder, fast_decoder, shapes, new_tokens=32)
"""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from bench.components import Shapes, build_decoder, model_config
from bench.decode import TEXT_PROMPT, fast_generate, naive_generate, prompt_embeds
from bench.timing import memory_cap, peak_gib, reset_peak, sync
from nextgpt.constants import MODALITIES, Modality
from nextgpt.inference.pipeline import DecoderPool
from nextgpt.model import as_prompt_embeds
from nextgpt.signals import find_signal_spans

logger = logging.getLogger(__name__)


def prompt_to_png(model, decoder, generate, new_tokens: int, feature_dim: int, steps: int) -> dict[str, float]:
    """One text prompt to PNG bytes; returns the time of each step in ms and the PNG size."""
    times: dict[str, float] = {}
    sync()
    start = last = time.perf_counter()

    def mark(name: str) -> None:
        nonlocal last
        sync()
        now = time.perf_counter()
        times[name] = (now - last) * 1e3
        last = now

    with torch.no_grad():
        # 1. Prompt ids and embeddings.
        token_ids, embeds = prompt_embeds(model, feature_dim, TEXT_PROMPT)  # (1, L), (1, L, D)
        # 2. Reply text, then the image span a trained model ends it with.
        reply = generate(embeds, new_tokens).reshape(-1)[-new_tokens:]  # (G,)
        span = torch.tensor(model.signal_ids[Modality.IMAGE], device=reply.device)
        reply = torch.cat([reply, span])  # (G + 4,)
        mark("decode_ms")
        # 3. Teacher-forced pass over prompt + reply: hidden states at the span, projected.
        full_ids = torch.cat([token_ids, reply[None]], dim=1)  # (1, L + G + 4)
        full_embeds = torch.cat([embeds, model.embed_tokens(reply[None])], dim=1)  # (1, L + G + 4, D)
        hidden = model.llm(inputs_embeds=full_embeds, output_hidden_states=True, use_cache=False).hidden_states[-1]
        scan = find_signal_spans(full_ids, model.signal_ids)
        conditioning = model.project_signals(hidden, full_ids, scan)[Modality.IMAGE]  # (1, 77, 768)
        mark("project_ms")
        # 4. Render and encode.
        image = decoder.generate(as_prompt_embeds(Modality.IMAGE, conditioning), num_inference_steps=steps, seed=0)[0]
        mark("render_ms")
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        mark("png_ms")
    times["total_ms"] = (time.perf_counter() - start) * 1e3
    times["png_bytes"] = buffer.tell()
    times["steps"] = steps
    return times


def _median_run(fn, repeat: int) -> dict[str, float]:
    runs = [fn() for _ in range(repeat)]
    best = sorted(runs, key=lambda r: r["total_ms"])[len(runs) // 2]
    return best


def run_png_naive(model, decoder, new_tokens: int, feature_dim: int, steps: int, repeat: int) -> dict[str, Any]:
    """Plain `generate` + the plain fp16 pipeline with its own scheduler (warm-up call untimed)."""

    def generate(embeds, n):
        return naive_generate(model.llm, embeds, n)

    prompt_to_png(model, decoder, generate, new_tokens, feature_dim, 1)
    return _median_run(lambda: prompt_to_png(model, decoder, generate, new_tokens, feature_dim, steps), repeat)


def run_png_ours(
    model, decoder, fast_decoder, new_tokens: int, feature_dim: int, steps: int, repeat: int
) -> dict[str, Any]:
    """FastDecoder + the optimised pipeline (already passed through `apply_decoder_speedups`)."""

    def generate(embeds, n):
        fast_decoder.reserve(embeds.shape[1] + n)
        return fast_generate(fast_decoder, embeds, n)

    prompt_to_png(model, decoder, generate, new_tokens, feature_dim, 2)
    return _median_run(lambda: prompt_to_png(model, decoder, generate, new_tokens, feature_dim, steps), repeat)


class ShapedDecoderPool(DecoderPool):
    """`DecoderPool` whose decoders are the shaped random pipelines instead of folders (same low-memory behaviour:
    parked on CPU, moved to the device for one `generate`, offloaded after)."""

    def __init__(self, shapes: Shapes, work_dir: Path, device: torch.device, low_memory: bool, steps: int):
        cfg = model_config(shapes, lora=False)
        for modality in MODALITIES:
            getattr(cfg.decoders, modality.value).pipeline_path = Path(f"shaped-{modality.value}")
        super().__init__(cfg, device, low_memory=low_memory)
        self.shapes = shapes
        self.work_dir = work_dir
        self.steps = steps
        self.dtype = "float16" if device.type == "cuda" else "float32"

    def load(self, modality: Modality):
        if modality not in self._loaded:
            decoder = build_decoder(modality, self.shapes, self.work_dir, self.dtype, num_inference_steps=self.steps)
            self._loaded[modality] = decoder if self.low_memory else decoder.to(self.device)
        return self._loaded[modality]


def run_inference_memory(
    model, shapes: Shapes, work_dir: Path, device: str, cap_gib: float | None, steps: int
) -> dict[str, Any]:
    """Under a `cap_gib` memory cap: encode an image, decode a reply, then render one image, one video and one audio
    clip through a low-memory `DecoderPool` (one decoder on the GPU at a time)."""
    pool = ShapedDecoderPool(shapes, work_dir, torch.device(device), low_memory=True, steps=steps)
    pool.load_all()  # built on CPU before the window: building is not what is measured
    result: dict[str, Any] = {"cap_gib": cap_gib, "steps": steps, "per_modality_peak_gib": {}}
    reset_peak()
    try:
        with memory_cap(cap_gib), torch.no_grad():
            side = shapes.encoder.image_size
            features = model.encoder(Modality.IMAGE, torch.randn(1, 3, side, side, device=device))  # (1, 1024)
            _, embeds = prompt_embeds(model, features.shape[-1])
            naive_generate(model.llm, embeds, 16)
            result["llm_peak_gib"] = peak_gib()
            for modality in MODALITIES:
                decoder = pool[modality]
                conditioning = torch.randn(1, *decoder.conditioning_shape, device=device)
                decoder.generate(conditioning, seed=0)
                result["per_modality_peak_gib"][modality.value] = peak_gib()
        result["fits"] = True
    except torch.OutOfMemoryError as error:
        result["fits"] = False
        result["error"] = str(error).splitlines()[0]
    result["peak_gib"] = peak_gib()
    result["video_size"] = list(shapes.video_size)
    return result
