"""Sharing one model between concurrent requests: admission, dynamic batching of text decoding, decoder queues.

- `Admission`: at most `max_concurrent` requests run; up to `max_queue` more wait; beyond that a request is refused
  at once (429) rather than piling up until every client times out.
- `TextBatcher`: one thread owns text decoding. Prompts that arrive while it is busy, or within `batch_window_ms` of
  the first, are decoded together (one `BatchDecoder`, compiled once on CUDA); a cancelled prompt (its client went
  away) leaves the batch at the next token. Dynamic, not continuous, batching: a prompt arriving mid-batch waits
  for the batch to end.
- `QueuedDecoders`: the decoder pool seen through one lock per decoder (one lock for all in low-memory mode, where
  decoders visit the device one at a time), so each diffusion pipeline renders one request at a time.

    batcher = TextBatcher(pipeline.model.llm, stop_token_ids(pipeline.model), max_batch_size=16, window_s=0.01,
                          max_cache_len=1024)
    ids = batcher.submit(prepared.decode_row(streamer, cancel)).result()   # (T,) ids, or raises GenerationCancelled
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from nextgpt.constants import MODALITIES, Modality
from nextgpt.decoders.cancel import GenerationCancelled
from nextgpt.inference.batch_decode import BatchDecoder, DecodeRow
from nextgpt.serving.api_errors import ApiError

logger = logging.getLogger(__name__)


class Admission:
    """Counts running and waiting requests (on the event loop's thread); refuses the one over `max_queue` waiting.

    Args:
        max_concurrent: requests processed at once.
        max_queue: requests allowed to wait for a slot.
    """

    def __init__(self, max_concurrent: int, max_queue: int):
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self._slots = asyncio.Semaphore(max_concurrent)
        self.running = 0
        self.waiting = 0

    async def enter(self) -> None:
        """Take a slot, waiting if needed.

        Raises:
            ApiError: 429 when `max_queue` requests already wait.
        """
        if self._slots.locked():
            if self.waiting >= self.max_queue:
                raise ApiError(
                    429,
                    f"server busy: {self.running} requests running and {self.waiting} waiting (--max-concurrent "
                    f"{self.max_concurrent}, --max-queue {self.max_queue}); retry later",
                )
            self.waiting += 1
            try:
                await self._slots.acquire()
            finally:
                self.waiting -= 1
        else:
            await self._slots.acquire()
        self.running += 1

    def leave(self) -> None:
        self.running -= 1
        self._slots.release()


class TextBatcher:
    """The one thread that decodes text: takes queued prompts in batches and resolves each one's future.

    Args:
        llm: the loaded pipeline's LLM (`pipeline.model.llm`).
        stop_ids: ids that end a reply (`stop_token_ids(pipeline.model)`).
        max_batch_size: most prompts per batch (the rows of the decoder's static KV cache).
        window_s: after the first prompt of a batch, how long to wait for more.
        max_cache_len: padded prompt + reply the cache starts with (a longer batch grows it, and recompiles).
        compile: compile the decode step; None: on CUDA only.
    """

    def __init__(
        self,
        llm: Any,
        stop_ids: Sequence[int],
        max_batch_size: int,
        window_s: float,
        max_cache_len: int,
        compile: bool | None = None,
    ):
        self.decoder = BatchDecoder(llm, max_batch_size, max_cache_len, compile)
        self.stop_ids = list(stop_ids)
        self.max_batch_size = max_batch_size
        self.window_s = window_s
        self.batch_sizes: list[int] = []
        """Size of every batch decoded so far (read by tests and logs)."""
        self._queue: queue.Queue[tuple[DecodeRow, Future] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="text-batcher", daemon=True)
        self._thread.start()

    def submit(self, row: DecodeRow) -> Future:
        """Queue one prompt; the future gets its (T,) ids or the `GenerationCancelled` that ended it."""
        future: Future = Future()
        self._queue.put((row, future))
        return future

    def close(self) -> None:
        """Stop the thread after the batch in progress."""
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _collect(self, first: tuple[DecodeRow, Future]) -> tuple[list[tuple[DecodeRow, Future]], bool]:
        """The first prompt plus what arrives within the window (what already waits joins at once)."""
        batch, closing = [first], False
        deadline = time.monotonic() + self.window_s
        while len(batch) < self.max_batch_size:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is None:
                closing = True
                break
            batch.append(item)
        return batch, closing

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, closing = self._collect(first)
            live = [(row, future) for row, future in batch if future.set_running_or_notify_cancel()]
            self.batch_sizes.append(len(live))
            try:
                results = self.decoder.decode([row for row, _ in live], self.stop_ids)
            except Exception as err:  # a bug or an out-of-memory: every waiting request gets the error
                logger.exception("text decoding failed for a batch of %d", len(live))
                for row, future in live:
                    if row.streamer is not None:
                        row.streamer.end()  # a client reading the stream is not left waiting
                    future.set_exception(err)
            else:
                for (_, future), result in zip(live, results, strict=True):
                    if isinstance(result, GenerationCancelled):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
            if closing:
                return


class _QueuedDecoder:
    def __init__(self, pool: Mapping[Modality, Any], modality: Modality, lock: threading.Lock):
        self.pool = pool
        self.modality = modality
        self.lock = lock

    def generate(self, prompt_embeds: Any, **kwargs: Any) -> list:
        with self.lock:  # loading and rendering: one request at a time per decoder
            return self.pool[self.modality].generate(prompt_embeds, **kwargs)


class QueuedDecoders(Mapping):
    """The pool's decoders, each behind a lock, restricted to the modalities a request may render.

    Args:
        pool: the pipeline's `DecoderPool`.
        locks: one lock per modality (the same lock for all in low-memory mode).
        allowed: modalities this view offers.
    """

    def __init__(self, pool: Any, locks: Mapping[Modality, threading.Lock], allowed: tuple[Modality, ...]):
        self.pool = pool
        self.locks = locks
        self.allowed = tuple(m for m in allowed if m in pool)

    @staticmethod
    def locks_for(pool: Any) -> dict[Modality, threading.Lock]:
        """Per-decoder locks, or one shared lock when the pool is low-memory (one decoder on the device at a time)."""
        if getattr(pool, "low_memory", False):
            shared = threading.Lock()
            return {m: shared for m in MODALITIES}
        return {m: threading.Lock() for m in MODALITIES}

    def __contains__(self, modality: object) -> bool:
        return modality in self.allowed

    def __iter__(self) -> Iterator[Modality]:
        return iter(self.allowed)

    def __len__(self) -> int:
        return len(self.allowed)

    def __getitem__(self, modality: Modality) -> _QueuedDecoder:
        if modality not in self.allowed:
            raise KeyError(modality)
        return _QueuedDecoder(self.pool, modality, self.locks[modality])
