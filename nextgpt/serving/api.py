"""An OpenAI-compatible HTTP API over `NextGPTPipeline` (FastAPI): chat completions with media in and out.

Routes: `POST /v1/chat/completions` (plain or `stream: true` server-sent events), `GET /v1/models`, `GET /health`
(503 until the weights are loaded), `GET /v1/files/{name}` (generated media in URL mode) and the OpenAPI page at
`/docs`. One request's path: admission (429 when the queue is full) → its media parts checked and staged
(`media_parts`) → prompt spliced in a worker thread → text decoded in a batch with the other requests
(`scheduler.TextBatcher`) → signal spans rendered by queued decoders → media as content parts (`media_out`). A client
that disconnects sets its request's cancel event: its row leaves the text batch at the next token, its diffusion
stops at the next denoising step, and its slot is freed.

    app = create_app(ServeConfig(api_key="s3cret"), loader=lambda: NextGPTPipeline.from_pretrained(folder))
    uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

from nextgpt.config import ConfigError
from nextgpt.decoders.cancel import GenerationCancelled
from nextgpt.inference.generation import reply_stop_ids, stop_token_ids
from nextgpt.inference.pipeline import NextGPTPipeline, PreparedRequest
from nextgpt.serving import api_responses as responses
from nextgpt.serving.api_config import ServeConfig
from nextgpt.serving.api_errors import ApiError
from nextgpt.serving.api_schema import ChatRequest, RequestSettings, request_settings
from nextgpt.serving.media_out import FILES_ROUTE, MediaWriter
from nextgpt.serving.media_parts import read_messages
from nextgpt.serving.scheduler import Admission, QueuedDecoders, TextBatcher
from nextgpt.serving.tool_calls import tool_call_of
from nextgpt.tools.library import load_tool_library

logger = logging.getLogger(__name__)

DISCONNECT_POLL_S = 0.2
"""How often a non-streamed request checks that its client is still there."""


class ServerState:
    """The loaded model and the machinery shared by all requests (None parts until the weights are loaded)."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.pipeline: NextGPTPipeline | None = None
        self.load_error: str | None = None
        self.batcher: TextBatcher | None = None
        self.admission = Admission(config.max_concurrent, config.max_queue)
        self.executor = ThreadPoolExecutor(max_workers=config.max_concurrent, thread_name_prefix="request")
        self.media = MediaWriter(config)
        self.scratch = Path(tempfile.mkdtemp(prefix="nextgpt-api-uploads-"))
        self.locks: dict = {}
        self.model_id = config.model_name or "nextgpt"
        self.tool_library = None if config.tools is None else load_tool_library(config.tools)
        self.stopped = 0
        """Generations (text or media) stopped because their client went away."""
        self._stopped_lock = threading.Lock()

    def attach(self, pipeline: NextGPTPipeline) -> None:
        """Make the server ready with a loaded pipeline."""
        self.locks = QueuedDecoders.locks_for(pipeline.decoders)
        cache_len = pipeline.cfg.model.llm.max_length + pipeline.cfg.generation.max_new_tokens
        self.batcher = TextBatcher(
            pipeline.model.llm,
            stop_token_ids(pipeline.model),
            self.config.max_batch_size,
            self.config.batch_window_ms / 1000,
            cache_len,
        )
        self.model_id = self.config.model_name or (pipeline.folder.name if pipeline.folder else "nextgpt")
        self.pipeline = pipeline  # last: /health turns 200 only when everything above exists

    def watch(self, future: Future) -> Future:
        """Count `future` in `stopped` if it ends cancelled (whether or not anyone still awaits it)."""

        def done(finished: Future) -> None:
            if not finished.cancelled() and isinstance(finished.exception(), GenerationCancelled):
                with self._stopped_lock:
                    self.stopped += 1

        future.add_done_callback(done)
        return future

    def ready(self) -> NextGPTPipeline:
        if self.pipeline is None:
            reason = f"loading failed: {self.load_error}" if self.load_error else "the weights are still loading"
            raise ApiError(503, f"not ready ({reason}); retry when GET /health answers 200")
        return self.pipeline

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        shutil.rmtree(self.scratch, ignore_errors=True)


def create_app(
    config: ServeConfig,
    pipeline: NextGPTPipeline | None = None,
    loader: Callable[[], NextGPTPipeline] | None = None,
) -> FastAPI:
    """The ASGI app.

    Args:
        config: server settings and limits.
        pipeline: an already loaded pipeline (tests, notebooks); or
        loader: loads one in a background thread at startup, while /health answers 503.

    Raises:
        ValueError: neither or both of `pipeline` and `loader`.
    """
    if (pipeline is None) == (loader is None):
        raise ValueError("create_app needs exactly one of pipeline (loaded) or loader (loads at startup)")
    state = ServerState(config)
    if pipeline is not None:
        state.attach(pipeline)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if loader is not None:
            threading.Thread(target=_load, args=(state, loader), name="loader", daemon=True).start()
        yield
        state.close()

    app = FastAPI(title="nextgpt", description="OpenAI-compatible any-to-any chat (NExT-GPT)", lifespan=lifespan)
    app.state.nextgpt = state
    _add_error_handlers(app)
    app.add_middleware(_BodyLimit, max_bytes=config.max_request_bytes)
    auth = Depends(_key_checker(config.api_key))

    @app.get("/health")
    async def health() -> JSONResponse:
        if state.pipeline is None:
            return JSONResponse({"status": "failed" if state.load_error else "loading"}, status_code=503)
        return JSONResponse({"status": "ok", "model": state.model_id})

    @app.get("/v1/models", dependencies=[auth])
    async def models() -> dict[str, Any]:
        state.ready()
        return {"object": "list", "data": [{"id": state.model_id, "object": "model", "owned_by": "nextgpt"}]}

    @app.get(FILES_ROUTE + "/{name}", dependencies=[auth])
    async def files(name: str) -> FileResponse:
        path = state.media.find(name)
        if path is None:
            raise ApiError(404, f"no generated file {name!r} (files are kept for the last --keep-outputs replies)")
        return FileResponse(path)

    @app.post("/v1/chat/completions", dependencies=[auth])
    async def chat_completions(body: ChatRequest, request: Request) -> Any:
        return await _chat(state, body, request)

    return app


def _load(state: ServerState, loader: Callable[[], NextGPTPipeline]) -> None:
    try:
        state.attach(loader())
        logger.info("ready: serving %s", state.model_id)
    except Exception as err:  # reported by /health and every request; the process stays up to say so
        state.load_error = " ".join(str(err).split())[:300] or type(err).__name__
        logger.exception("loading the model failed")


def _key_checker(api_key: str | None) -> Callable[[Request], None]:
    def check(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), api_key.encode()):
            raise ApiError(401, "missing or wrong API key; send the header 'Authorization: Bearer <key>'")

    return check


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, err: ApiError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse(_validation_error(err).body(), status_code=400)


def _validation_error(err: RequestValidationError) -> ApiError:
    """Pydantic's first error as one line naming the field."""
    first = err.errors()[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    field = ".".join(loc) or "body"
    if first.get("type") == "extra_forbidden":
        supported = ", ".join(ChatRequest.model_fields)
        return ApiError(400, f"unknown field {field!r}; this server reads: {supported}", field)
    if first.get("type") == "json_invalid":
        return ApiError(400, "the body is not valid JSON; send a JSON object", "body")
    return ApiError(400, f"{field}: {first.get('msg', 'invalid value')} (got {first.get('input')!r:.80})", field)


class _BodyLimit:
    """Refuses a body over `max_bytes` (413): at once from its Content-Length, or while it arrives when chunked."""

    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _error(self, size: str) -> ApiError:
        limit = f"{self.max_bytes / 2**20:.1f} MB"
        return ApiError(
            413, f"the request body is {size}, over the {limit} limit (--max-request-mb); send smaller media"
        )

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            err = self._error(f"{int(length) / 2**20:.1f} MB")
            await JSONResponse(err.body(), status_code=413)(scope, receive, send)
            return
        received = 0

        async def counted() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise self._error(f"over {received / 2**20:.1f} MB")
            return message

        await self.app(scope, counted, send)


async def _in_thread(state: ServerState, fn: Callable, *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(state.executor, fn, *args)


async def _until_done(future: Future, request: Request, cancel: threading.Event) -> Any:
    """Await a worker's future; if the client goes away meanwhile, set `cancel` (the work stops at its next step)."""
    waiting = asyncio.wrap_future(future)
    while True:
        done, _ = await asyncio.wait({waiting}, timeout=DISCONNECT_POLL_S)
        if done:
            return waiting.result()
        if not cancel.is_set() and await request.is_disconnected():
            logger.info("client went away: cancelling its request")
            cancel.set()


def _prepare(state: ServerState, body: ChatRequest, settings: RequestSettings, folder: Path) -> PreparedRequest:
    """Stage the media and splice the prompt (worker thread)."""
    pipeline = state.ready()
    folder.mkdir(parents=True)
    messages = read_messages(body.messages, state.config, folder)
    try:
        return pipeline.prepare(messages, settings.generation, settings.decoder_options)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        raise ApiError(400, str(err), "messages") from None


def _finish(
    state: ServerState,
    prepared: PreparedRequest,
    ids: Any,
    settings: RequestSettings,
    cancel: threading.Event,
    cid: str,
) -> tuple[str, list[dict[str, Any]]]:
    """Render the reply's signal spans through the decoder queues and encode the media (worker thread)."""
    pipeline = state.ready()
    decoders = QueuedDecoders(pipeline.decoders, state.locks, settings.outputs)
    result = pipeline.finish(prepared, ids, cancel, decoders)
    for problem in result.problems:
        logger.warning("%s: %s", cid, problem)
    return result.text, state.media.parts(pipeline, result, cid)


def _finish_reason(state: ServerState, ids: Any, prepared: PreparedRequest) -> str:
    stops = reply_stop_ids(state.ready().model, prepared.generation)
    ended = ids.numel() and int(ids[-1]) in stops
    return "stop" if ended or ids.numel() < prepared.generation.max_new_tokens else "length"


async def _chat(state: ServerState, body: ChatRequest, request: Request) -> Any:
    pipeline = state.ready()
    if body.model not in (None, state.model_id):
        raise ApiError(
            404, f"model {body.model!r} is not served here; use {state.model_id!r} (GET /v1/models)", "model"
        )
    settings = request_settings(body, pipeline, state.config)
    await state.admission.enter()
    cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    folder = state.scratch / cid
    cancel = threading.Event()
    streaming = False
    try:
        prepared = await _in_thread(state, _prepare, state, body, settings, folder)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = _stream(state, body, prepared, settings, cancel, cid, folder, include_usage)
            streaming = True  # the stream releases the slot when it ends
            return StreamingResponse(events, media_type="text/event-stream")
        future = state.watch(state.batcher.submit(prepared.decode_row(None, cancel)))
        ids = await _until_done(future, request, cancel)
        work = state.watch(state.executor.submit(_finish, state, prepared, ids, settings, cancel, cid))
        text, parts = await _until_done(work, request, cancel)
        token_usage = responses.usage(prepared.prompt_tokens, int(ids.numel()))
        call = tool_call_of(text, state.tool_library, body)
        if call is not None:
            return responses.completion(cid, state.model_id, None, "tool_calls", token_usage, tool_calls=[call])
        content = responses.message_content(text, parts)
        return responses.completion(cid, state.model_id, content, _finish_reason(state, ids, prepared), token_usage)
    except GenerationCancelled:
        raise ApiError(499, "the client closed the request; its generation was stopped") from None
    finally:
        if not streaming:
            shutil.rmtree(folder, ignore_errors=True)
            state.admission.leave()


async def _stream(
    state: ServerState,
    body: ChatRequest,
    prepared: PreparedRequest,
    settings: RequestSettings,
    cancel: threading.Event,
    cid: str,
    folder: Path,
    include_usage: bool,
) -> AsyncIterator[str]:
    """The reply as `chat.completion.chunk` events; a disconnect cancels the generation (in `finally`)."""
    pipeline = state.ready()
    model = state.model_id
    finished = False
    try:
        yield responses.chunk(cid, model, {"role": "assistant", "content": ""})
        pieces: asyncio.Queue = asyncio.Queue()
        streamer = responses.LoopStreamer(pipeline.model.tokenizer, asyncio.get_running_loop(), pieces)
        future = state.watch(state.batcher.submit(prepared.decode_row(streamer, cancel)))
        while (piece := await pieces.get()) is not None:
            yield responses.chunk(cid, model, {"content": piece})
        ids = await asyncio.wrap_future(future)
        work = state.watch(state.executor.submit(_finish, state, prepared, ids, settings, cancel, cid))
        text, parts = await asyncio.wrap_future(work)
        if parts:
            yield responses.chunk(cid, model, {"media": parts})
        call = tool_call_of(text, state.tool_library, body)
        if call is not None:  # the text streamed above is the call's source; the call itself comes last
            yield responses.chunk(cid, model, {"tool_calls": [{"index": 0, **call}]}, "tool_calls")
        else:
            yield responses.chunk(cid, model, {}, _finish_reason(state, ids, prepared))
        if include_usage:
            yield responses.chunk(cid, model, {}, token_usage=responses.usage(prepared.prompt_tokens, ids.numel()))
        yield responses.DONE
        finished = True
    except ApiError as err:
        yield responses.error_event(err.body())
    except Exception as err:  # the status line is sent: report it in the stream, keep the server up
        if not isinstance(err, GenerationCancelled):
            logger.exception("%s failed", cid)
            yield responses.error_event(ApiError(500, f"generation failed: {type(err).__name__}: {err}").body())
    finally:
        if not finished:
            cancel.set()
        shutil.rmtree(folder, ignore_errors=True)
        state.admission.leave()
