"""Batch-1 decode tokens/s: plain HF `generate` with a dynamic cache (naive) next to `FastDecoder` (ours).

The prompt is a Vicuna v1 conversation with one image (its ImageBind feature spliced as in inference); the reply is a
fixed number of greedy tokens (EOS suppressed, so both paths decode exactly the same count). Tokens/s is new tokens
over the whole call, prefill included, after warm-up calls (compilation and CUDA-graph capture are not timed).

    result = run_decode_section(model, FULL, new_tokens=256)
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from bench.timing import device_busy_ms, peak_gib, profile_top_kernels, reset_peak, sync, time_calls

logger = logging.getLogger(__name__)


CACHE_LEN = 512
"""Static KV cache of the FastDecoder: room for the decode and the prompt->PNG requests without a recompile."""
IMAGE_PROMPT = "<image>\nDescribe the picture in detail, then draw a similar one as an image."
TEXT_PROMPT = "Please generate an image of a red bus driving along a coastal road at sunset."


def prompt_embeds(model, feature_dim: int, text: str = IMAGE_PROMPT) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, L) ids and (1, L, D) spliced embeddings of a generation prompt (an `<image>` gets a random feature)."""
    from nextgpt.constants import Modality
    from nextgpt.llm.conversation import Turn, build_generation_prompt
    from nextgpt.llm.splice import splice_media

    ids = torch.tensor([build_generation_prompt(model.tokenizer, [Turn("user", text)])], device=model.device)  # (1, L)
    media = {}
    with torch.no_grad():
        if "<image>" in text:
            features = torch.nn.functional.normalize(torch.randn(1, feature_dim, device=model.device), dim=-1)
            dtype = next(model.input_projector.parameters()).dtype
            media = {Modality.IMAGE: model.input_projector(features.to(dtype))}  # (1, 1024) -> (1, 1, D)
        spliced = splice_media(ids, torch.ones_like(ids), None, model.embed_tokens, media)
    return spliced.token_ids, spliced.inputs_embeds


def _hf_greedy(llm, embeds: torch.Tensor, new_tokens: int, **cache: str) -> torch.Tensor:
    """HF `generate`, greedy, exactly `new_tokens` tokens (`cache`: extra cache arguments)."""
    with torch.no_grad():
        return llm.generate(
            inputs_embeds=embeds,
            attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=0,
            **cache,
        )


def naive_generate(llm, embeds: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Plain `generate`: dynamic KV cache, greedy, exactly `new_tokens` tokens."""
    return _hf_greedy(llm, embeds, new_tokens)


def static_generate(llm, embeds: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """HF `generate` with a static cache (transformers compiles the decode step itself on CUDA): a design probe."""
    return _hf_greedy(llm, embeds, new_tokens, cache_implementation="static")


def fast_decoder(llm, max_cache_len: int, compile_step: bool):
    """The project's FastDecoder, or None while it is not there."""
    try:
        from nextgpt.inference.fast_decode import FastDecoder
    except ImportError:
        return None
    return FastDecoder(llm, max_cache_len, compile=compile_step)


def fast_generate(decoder, embeds: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """`FastDecoder.generate`, greedy, no stop ids: exactly `new_tokens` tokens."""
    with torch.no_grad():
        return decoder.generate(embeds, new_tokens)


def _rate(fn, new_tokens: int, warmup: int, repeat: int) -> dict[str, float]:
    stats = time_calls(fn, warmup=warmup, repeat=repeat)
    stats["tokens_per_s"] = new_tokens / (stats["median_ms"] / 1e3)
    return stats


def split_call(decoder, embeds: torch.Tensor, new_tokens: int, call_ms: float, repeat: int) -> dict[str, float]:
    """Split a whole call into its fixed part and its steps: a one-token call is the prefill and everything around
    the steps (cache reset, first token); the rest of a `new_tokens` call is `new_tokens - 1` decode steps.

    Returns:
        {"one_token_call_ms", "step_ms", "step_tokens_per_s"}.
    """
    fixed = time_calls(lambda: fast_generate(decoder, embeds, 1), warmup=1, repeat=max(repeat, 5))["median_ms"]
    step_ms = (call_ms - fixed) / max(new_tokens - 1, 1)
    return {"one_token_call_ms": fixed, "step_ms": step_ms, "step_tokens_per_s": 1e3 / step_ms}


def run_decode_section(
    model, feature_dim: int, new_tokens: int, compile_step: bool, repeat: int = 3, probe_static: bool = False
) -> tuple[dict[str, Any], Any]:
    """Naive and fast batch-1 decoding of the same prompt.

    Args:
        model: a NextGPT (no LoRA; the merged export a deployment serves).
        feature_dim: ImageBind output width.
        new_tokens: tokens generated per call.
        compile_step: FastDecoder's `compile` switch (`generation.compile_decode`; off in the CPU smoke run).
        repeat: timed calls per path.
        probe_static: also time HF's own static-cache path (design probe).

    Returns:
        ({"naive": stats, "ours": stats | None, "ratio": ours/naive tokens/s, "prompt_tokens": L, ...}, the
        FastDecoder (compiled, reusable) or None).
    """
    model.eval()
    _, embeds = prompt_embeds(model, feature_dim)
    llm = model.llm
    reset_peak()
    naive = _rate(lambda: naive_generate(llm, embeds, new_tokens), new_tokens, warmup=1, repeat=repeat)
    naive["peak_gib"] = peak_gib()
    logger.info("decode naive: %.1f tokens/s", naive["tokens_per_s"])
    result: dict[str, Any] = {"naive": naive, "prompt_tokens": embeds.shape[1], "new_tokens": new_tokens}
    if probe_static:
        start = time.perf_counter()
        static_generate(llm, embeds, new_tokens)
        sync()
        result["hf_static_first_call_s"] = time.perf_counter() - start
        result["hf_static"] = _rate(lambda: static_generate(llm, embeds, new_tokens), new_tokens, 1, repeat)
    decoder = fast_decoder(llm, max(CACHE_LEN, embeds.shape[1] + new_tokens), compile_step)
    ours = None
    if decoder is not None:
        reset_peak()
        start = time.perf_counter()
        fast_generate(decoder, embeds, new_tokens)
        sync()
        result["ours_first_call_s"] = time.perf_counter() - start
        ours = _rate(lambda: fast_generate(decoder, embeds, new_tokens), new_tokens, warmup=2, repeat=repeat)
        ours["peak_gib"] = peak_gib()
        ours.update(split_call(decoder, embeds, new_tokens, ours["median_ms"], repeat))
        call = lambda: fast_generate(decoder, embeds, new_tokens)  # noqa: E731
        # Where a slow call's time went: the GPU's kernel time against the call's wall time, and the call's profile.
        ours["device_busy_ms"] = device_busy_ms(call)
        ours["profile"] = profile_top_kernels(call, steps=1, rows=15)
        ours["profile_host"] = profile_top_kernels(call, steps=1, rows=15, sort_by_host=True)
        logger.info("decode ours: %.1f tokens/s", ours["tokens_per_s"])
    result["ours"] = ours
    result["ratio"] = None if ours is None else ours["tokens_per_s"] / naive["tokens_per_s"]
    return result, decoder
