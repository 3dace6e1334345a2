"""The OpenAI-compatible API driven by the official `openai` client over loopback HTTP, on the taught tiny checkpoint.

Every reply is checked against the pipeline answering the same conversation directly (greedy): the API adds
transport, batching and queues, never a different answer.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import wave
from pathlib import Path

import av
import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from nextgpt.constants import Modality
from nextgpt.inference.media_io import save_audio, save_image
from nextgpt.inference.requests import Message
from nextgpt.serving.api import create_app
from nextgpt.serving.api_config import ServeConfig
from nextgpt.serving.scheduler import Admission

KEY = "test-key"
DRAW = "Please generate an image of a red circle on the left."


@pytest.fixture(scope="module")
def media_root(tmp_path_factory, taught_world) -> Path:
    root = tmp_path_factory.mktemp("media")
    image = next(Path(taught_world).parent.rglob("*.png"))
    (root / "shape.png").write_bytes(image.read_bytes())
    outside = save_image(np.zeros((8, 8, 3), np.uint8), tmp_path_factory.mktemp("outside") / "secret.png")
    (root / "escape.png").symlink_to(outside)
    save_audio(np.zeros(2000 * 8, np.float32), root / "long.wav", 2000)  # 32 KB: under the upload limit
    return root


@pytest.fixture(scope="module")
def server(demo_pipeline, media_root, serve):
    config = ServeConfig(
        api_key=KEY, media_root=media_root, max_upload_mb=0.1, max_request_mb=1.0, max_media_seconds=5.0
    )
    app = create_app(config, demo_pipeline)
    with serve(app) as url:
        yield url, app.state.nextgpt


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0, timeout=120)


def _data_uri(path: Path, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def _chat(client, content, **options):
    return client.chat.completions.create(model="final", messages=[{"role": "user", "content": content}], **options)


def _part_bytes(part: dict, kind: str, mime: str) -> bytes:
    url = part[kind]["url"]
    assert part["type"] == kind and url.startswith(f"data:{mime};base64,")
    return base64.b64decode(url.split(",", 1)[1])


def test_models_health_and_plain_text_match_the_pipeline(server, client, demo_pipeline):
    url, _ = server
    assert httpx.get(url + "/health").json() == {"status": "ok", "model": "final"}
    assert [m.id for m in client.models.list().data] == ["final"]
    reply = _chat(client, "What can you do?")
    alone = demo_pipeline.generate([Message("user", "What can you do?")])
    assert reply.choices[0].message.content == alone.text and alone.text
    assert reply.choices[0].finish_reason == "stop" and reply.object == "chat.completion"
    assert reply.usage.completion_tokens == len(alone.token_ids)
    prompt_len = demo_pipeline.prepare([Message("user", "What can you do?")]).prompt_tokens
    assert reply.usage.prompt_tokens == prompt_len and reply.usage.total_tokens == prompt_len + len(alone.token_ids)
    assert (
        httpx.get(url + "/docs").status_code == 200 and "/v1/chat/completions" in httpx.get(url + "/openapi.json").text
    )


def test_ignore_eos_replies_have_exactly_max_tokens_tokens(server, client, demo_pipeline):
    ended = _chat(client, "What can you do?", max_tokens=60)
    assert ended.choices[0].finish_reason == "stop" and ended.usage.completion_tokens < 60
    length = ended.usage.completion_tokens + 5
    forced = _chat(client, "What can you do?", max_tokens=length, extra_body={"ignore_eos": True})
    assert forced.usage.completion_tokens == length and forced.choices[0].finish_reason == "length"
    assert forced.choices[0].message.content.startswith(ended.choices[0].message.content)


def test_streamed_text_arrives_in_chunks_then_finish_reason_usage_and_done(server, client, demo_pipeline):
    prompt = "What can you do?"
    stream = _chat(client, prompt, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    alone = demo_pipeline.generate([Message("user", prompt)])
    assert len(pieces) > 1 and "".join(pieces).strip() == alone.text
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == len(alone.token_ids)
    body = {"model": "final", "stream": True, "messages": [{"role": "user", "content": prompt}]}
    raw = httpx.post(server[0] + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    events = [line for line in raw.text.splitlines() if line.startswith("data: ")]
    assert raw.headers["content-type"].startswith("text/event-stream") and events[-1] == "data: [DONE]"
    assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] == "stop"


def test_image_in_text_out_by_data_uri_and_by_file_url(client, demo_pipeline, media_root):
    image = media_root / "shape.png"
    question = "What is in this image?"
    alone = demo_pipeline.generate([Message("user", f"<image>\n{question}", {Modality.IMAGE: [image]})])
    for url in (_data_uri(image, "image/png"), image.as_uri()):
        content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": question}]
        assert _chat(client, content).choices[0].message.content == alone.text


def test_text_to_image_video_and_audio_come_back_as_decodable_parts(client, demo_pipeline):
    # Image: the PNG holds exactly the pipeline's pixels.
    reply = _chat(client, DRAW).choices[0].message.content
    alone = demo_pipeline.generate([Message("user", DRAW)])
    assert reply[0] == {"type": "text", "text": alone.text}
    png = Image.open(io.BytesIO(_part_bytes(reply[1], "image_url", "image/png")))
    np.testing.assert_array_equal(np.asarray(png.convert("RGB")), alone.images[0])
    # Video: an MP4 with the pipeline's frame count and size.
    prompt = "Please generate a video of a blue square moving up."
    reply = (
        _chat(client, prompt, max_tokens=64, extra_body={"num_frames": 4, "num_inference_steps": 2})
        .choices[0]
        .message.content
    )
    data = _part_bytes(reply[1], "video_url", "video/mp4")
    with av.open(io.BytesIO(data)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 4 and frames[0].shape[:2] == reply_size(demo_pipeline, prompt)
    # Audio: a 16-bit WAV at the decoder's rate, as long as asked.
    prompt = "Please generate a sound of a steady low tone."
    reply = _chat(client, prompt, max_tokens=64, extra_body={"audio_seconds": 0.5}).choices[0].message.content
    with wave.open(io.BytesIO(_part_bytes(reply[1], "audio_url", "audio/wav"))) as reader:
        assert reader.getframerate() == demo_pipeline.decoders.sample_rate and reader.getsampwidth() == 2
        assert reader.getnframes() == demo_pipeline.decoders.sample_rate // 2


def reply_size(pipeline, prompt: str) -> tuple[int, int]:
    from nextgpt.inference.decoder_pool import DecoderOptions

    options = {Modality.VIDEO: DecoderOptions(num_frames=4, num_inference_steps=2)}
    generation = pipeline.generation_config(max_new_tokens=64)
    return pipeline.generate([Message("user", prompt)], generation, options).videos[0].shape[1:3]


def test_multi_turn_with_a_generated_image_in_the_history(client, demo_pipeline):
    first = _chat(client, DRAW).choices[0].message.content
    follow_up = "What can you do?"
    messages = [
        {"role": "user", "content": DRAW},
        {"role": "assistant", "content": first},
        {"role": "user", "content": follow_up},
    ]
    reply = client.chat.completions.create(model="final", messages=messages)
    history = [
        Message("user", DRAW),
        Message("assistant", first[0]["text"], {Modality.IMAGE: [Path("generated.png")]}),
        Message("user", follow_up),
    ]
    expected = demo_pipeline.generate(history)
    content = reply.choices[0].message.content  # a string, or text and media parts when the reply made media
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
    assert "".join(part["text"] for part in parts if part["type"] == "text") == expected.text
    assert sum(part["type"] == "image_url" for part in parts) == len(expected.images)


def test_modalities_limit_what_the_reply_renders(client):
    reply = _chat(client, DRAW, modalities=["text"]).choices[0].message.content
    assert isinstance(reply, str)


def _refusal(call) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        call()
    message = caught.value.body["message"]
    assert "\n" not in message and len(message) < 300
    return caught.value


@pytest.mark.parametrize(
    "content, options, status, words",
    [
        ([{"type": "image_file", "image_file": {}}], {}, 400, "unknown part type 'image_file'"),
        ("hi", {"temperature": 5}, 400, "temperature must be in [0, 2], got 5"),
        ("hi", {"top_p": 0}, 400, "top_p must be in (0, 1], got 0"),
        ("hi", {"max_tokens": 0}, 400, "max_tokens must be in [1, "),
        ("hi", {"extra_body": {"num_inference_steps": 1000}}, 400, "num_inference_steps must be in [1, 200]"),
        ("hi", {"modalities": ["smell"]}, 400, "choose from ['text', 'image', 'video', 'audio']"),
        ("hi", {"n": 2}, 400, "n must be 1"),
        ("hi", {"extra_body": {"guidance": 3}}, 400, "unknown field 'guidance'"),
        ("draw <image> here", {}, 400, "send media as parts"),
        ("x" * 9000, {}, 400, "over the limit of 8000 (--max-prompt-chars)"),
    ],
)
def test_bad_options_and_parts_are_refused_in_one_line(client, content, options, status, words):
    err = _refusal(lambda: _chat(client, content, **options))
    assert err.status_code == status and words in err.body["message"]


def test_uploads_over_the_limits_and_paths_outside_the_root_are_refused(client, media_root, tmp_path):
    big = base64.b64encode(b"\x89PNG" + b"0" * 150_000).decode()
    part = [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{big}"}}]
    err = _refusal(lambda: _chat(client, part))
    assert err.status_code == 413 and "0.1 MB upload limit (--max-upload-mb)" in err.body["message"]
    huge = "A" * 1_200_000
    err = _refusal(lambda: _chat(client, [{"type": "input_audio", "input_audio": {"data": huge, "format": "wav"}}]))
    assert err.status_code == 413 and "(--max-request-mb)" in err.body["message"]
    long_audio = [{"type": "audio_url", "audio_url": {"url": (media_root / "long.wav").as_uri()}}]
    err = _refusal(lambda: _chat(client, long_audio))
    assert err.status_code == 400 and "lasts 8.0 s, over the 5 s limit (--max-media-seconds)" in err.body["message"]
    for url in (
        (media_root / "escape.png").as_uri(),  # a symlink inside the root pointing out of it
        f"file://{media_root}/../outside/secret.png",
        "file:///etc/hostname",
    ):
        err = _refusal(lambda url=url: _chat(client, [{"type": "image_url", "image_url": {"url": url}}]))
        assert err.status_code == 403 and "not a file inside the media root" in err.body["message"]
    err = _refusal(lambda: _chat(client, [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]))
    assert err.status_code == 400 and "nothing is downloaded" in err.body["message"]


def test_missing_or_wrong_api_key_is_401(server):
    for key in ("wrong", None):
        headers = {} if key is None else {"Authorization": f"Bearer {key}"}
        answer = httpx.get(server[0] + "/v1/models", headers=headers)
        assert answer.status_code == 401 and "Authorization: Bearer" in answer.json()["error"]["message"]
    wrong = openai.OpenAI(base_url=server[0] + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    assert httpx.get(server[0] + "/health").status_code == 200  # health needs no key


def test_health_is_503_until_the_weights_are_loaded(demo_pipeline, serve):
    import threading

    release = threading.Event()

    def load():
        release.wait(30)
        return demo_pipeline

    with serve(create_app(ServeConfig(), loader=load)) as url:
        assert httpx.get(url + "/health").status_code == 503
        answer = httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert answer.status_code == 503 and "GET /health" in answer.json()["error"]["message"]
        release.set()
        for _ in range(100):
            if httpx.get(url + "/health").status_code == 200:
                break
            asyncio.run(asyncio.sleep(0.05))
        assert httpx.get(url + "/health").json()["status"] == "ok"


def test_a_full_queue_is_refused_with_429():
    async def scenario() -> str:
        admission = Admission(max_concurrent=1, max_queue=1)
        await admission.enter()
        waiting = asyncio.create_task(admission.enter())
        await asyncio.sleep(0)
        try:
            await admission.enter()
        except Exception as err:  # noqa: BLE001 - the ApiError is the behaviour under test
            message = f"{err.status} {err.message}"
        admission.leave()
        await waiting
        admission.leave()
        assert admission.running == 0 and admission.waiting == 0
        return message

    message = asyncio.run(scenario())
    assert message.startswith("429 server busy: 1 requests running and 1 waiting (--max-concurrent 1, --max-queue 1)")


def test_a_client_that_disconnects_stops_its_generation_and_frees_its_slot(server):
    url, state = server
    stopped = state.stopped
    body = {
        "model": "final",
        "stream": True,
        "messages": [{"role": "user", "content": "Please generate a video of a blue square moving up."}],
        "max_tokens": 64,
    }
    body.update(num_inference_steps=200, num_frames=64)  # minutes of tiny diffusion if it were not stopped
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers=headers, timeout=60) as answer:
        for line in answer.iter_lines():
            if line.startswith("data: ") and '"finish_reason": null' in line and '"content": ""' not in line:
                break  # the text has started: leave now, mid-reply
    for _ in range(200):
        if state.admission.running == 0 and state.stopped > stopped:
            break
        asyncio.run(asyncio.sleep(0.05))
    assert state.admission.running == 0 and state.stopped == stopped + 1
