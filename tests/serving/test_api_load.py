"""A bounded load test on loopback: 64 concurrent mixed requests, three rounds, no errors, no memory growth, and the
throughput of batched text decoding against one-at-a-time decoding on the same CPU and the same server code."""

from __future__ import annotations

import asyncio
import base64
import gc
import os
import time
from pathlib import Path

import openai
import pytest

from nextgpt.serving.api import create_app
from nextgpt.serving.api_config import ServeConfig

NUM_REQUESTS = 64
RSS_TOLERANCE_MB = 96
"""Allowed RSS growth from the end of round 1 to the end of round 3 (after a warm-up round that loads the decoders and
starts the worker threads). Measured on a 2-core CPU: +50, +35, +20, +18, +11, +9, +8 MB over rounds 1-7 while the
count of Python objects stayed flat (within 0.3%): glibc's heaps fragmenting under tensors of every batch size from
64 threads, slowing down, not a leak. A leaked reply (a few hundred kB of media and cache each) would add over 50 MB
per round on its own, and any leaked Python object shows in the object count, checked more tightly."""
MAX_OBJECT_GROWTH = 5000
"""Allowed growth of `gc.get_objects()` over the same rounds (about 740,000 objects live)."""
MIN_SPEEDUP = 3.0

SUBJECTS = ["red circle", "blue square", "green triangle", "yellow star"]
PLACES = ["on the left", "on the right", "at the top", "at the bottom"]


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _text_prompt(index: int) -> str:
    return f"Tell me about a {SUBJECTS[index % 4]} {PLACES[(index // 4) % 4]}."


def _reply_text(content: str | list[dict]) -> str:
    """The text of a reply's content: the string, or its text parts when the reply also made media (which a tiny
    checkpoint may do for any prompt, depending on the machine it was taught on)."""
    return content if isinstance(content, str) else "".join(p["text"] for p in content if p["type"] == "text")


async def _one(client: openai.AsyncOpenAI, index: int, image_uri: str) -> str:
    """Request `index` of a round: text, streamed text, image->text or text->image, in turn."""
    kind = index % 4
    if kind == 0:
        reply = await client.chat.completions.create(
            model="final", messages=[{"role": "user", "content": _text_prompt(index)}], max_tokens=24
        )
        return _reply_text(reply.choices[0].message.content)
    if kind == 1:
        stream = await client.chat.completions.create(
            model="final", messages=[{"role": "user", "content": _text_prompt(index)}], max_tokens=24, stream=True
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    if kind == 2:
        content = [{"type": "image_url", "image_url": {"url": image_uri}}, {"type": "text", "text": "What is this?"}]
        reply = await client.chat.completions.create(model="final", messages=[{"role": "user", "content": content}])
        return _reply_text(reply.choices[0].message.content)
    prompt = "Please generate an image of a red circle on the left."  # one the tiny checkpoint answers with a span
    reply = await client.chat.completions.create(model="final", messages=[{"role": "user", "content": prompt}])
    content = reply.choices[0].message.content
    assert isinstance(content, list) and content[1]["type"] == "image_url", content
    return content[0]["text"]


async def _round(url: str, make_request, num: int = NUM_REQUESTS) -> tuple[list, float]:
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0, timeout=600) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*(make_request(client, i) for i in range(num)), return_exceptions=True)
        return results, time.perf_counter() - start


TEXT_REPLY_TOKENS = 48
"""Length of every reply of the text-only comparison (`ignore_eos`, as vLLM's load tests): the taught model ends its
replies after about 16 tokens, so short that the HTTP, client and splicing work of each request (the same in both
modes, about 9 ms a request on a 2-core CPU) outweighs the decoding that batching speeds up."""


async def _text_only(client: openai.AsyncOpenAI, index: int) -> str:
    reply = await client.chat.completions.create(
        model="final",
        messages=[{"role": "user", "content": _text_prompt(index)}],
        max_tokens=TEXT_REPLY_TOKENS,
        extra_body={"modalities": ["text"], "ignore_eos": True},
    )
    assert reply.usage.completion_tokens == TEXT_REPLY_TOKENS
    return reply.choices[0].message.content


@pytest.mark.slow
def test_64_concurrent_mixed_requests_three_rounds_no_errors_no_growth_and_batching_speedup(
    demo_pipeline, taught_world, serve
):
    image = next(Path(taught_world).parent.rglob("*.png"))
    image_uri = f"data:image/png;base64,{base64.b64encode(image.read_bytes()).decode()}"
    config = ServeConfig(api_key="k", max_concurrent=NUM_REQUESTS, max_queue=NUM_REQUESTS, max_batch_size=NUM_REQUESTS)
    app = create_app(config, demo_pipeline)
    state = app.state.nextgpt
    rss, objects = [], []
    with serve(app) as url:
        for _ in range(4):  # a warm-up round, then the three measured
            results, seconds = asyncio.run(_round(url, lambda c, i: _one(c, i, image_uri)))
            errors = [r for r in results if isinstance(r, BaseException)]
            assert not errors, errors[:3]
            assert all(isinstance(r, str) and r for r in results)
            gc.collect()
            rss.append(_rss_mb())
            objects.append(len(gc.get_objects()))
            print(f"mixed round: {NUM_REQUESTS} requests in {seconds:.2f} s, RSS {rss[-1]:.0f} MB")
        rss, objects = rss[1:], objects[1:]  # the ends of rounds 1, 2, 3 after the warm-up
        assert state.admission.running == 0 and max(state.batcher.batch_sizes) > 1
        batched, batched_s = asyncio.run(_round(url, _text_only))
        sizes = state.batcher.batch_sizes
    one_config = ServeConfig(api_key="k", max_concurrent=NUM_REQUESTS, max_queue=NUM_REQUESTS, max_batch_size=1)
    with serve(create_app(one_config, demo_pipeline)) as url:
        single, single_s = asyncio.run(_round(url, _text_only))
    assert batched == single  # greedy: batching changes the speed, not the replies
    speedup = single_s / batched_s
    print(
        f"RSS after rounds: {[round(r) for r in rss]} MB; text-only {NUM_REQUESTS} requests: batched "
        f"{NUM_REQUESTS / batched_s:.1f} req/s (batches up to {max(sizes)}), one at a time "
        f"{NUM_REQUESTS / single_s:.1f} req/s, speedup {speedup:.2f}x"
    )
    assert rss[2] - rss[0] < RSS_TOLERANCE_MB, rss
    assert objects[2] - objects[0] < MAX_OBJECT_GROWTH, objects
    assert speedup >= MIN_SPEEDUP, f"batched decoding is only {speedup:.2f}x faster"
