"""Per-step phase timing: where a training step's time goes, without making the host wait for the GPU inside the step.

The loop opens one step at a time; anything it calls (the model's forward included) marks phases with `phase(name)`.
On CUDA a phase records a pair of timing events on the current stream (recording does not synchronise) besides the
host clock; the events are read only when the step is resolved, which the loop does when it flushes metrics. With no
step open, `phase` returns a shared no-op context, so library code can mark phases unconditionally.

    timer = StepTimer(cuda=True)
    with timer.step() as timing:
        with phase("forward"):
            out = model(batch)
    timing.resolve()  # {"ms_forward": ..., "host_ms_forward": ..., "ms_gc": ..., "ms_step": ...}

Pauses of Python's garbage collector inside a step are summed as `ms_gc`, whichever phase they interrupt: on a
host-bound step they are time the GPU waits.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from types import TracebackType

import torch

_NO_OP: AbstractContextManager[None] = nullcontext()
_active: StepTiming | None = None
"""The step being timed; one per process (the loop times one step at a time)."""


def phase(name: str, *, device: bool = True) -> AbstractContextManager[None]:
    """Time the enclosed code as phase `name` of the active step; a shared no-op when no step is being timed.

    Args:
        name: the phase; it becomes the metric key `ms_<name>`. Repeats in one step (gradient accumulation) are summed;
            a phase nested inside itself counts once.
        device: also record CUDA events when the step times the GPU. False for host-only work (waiting for data,
            logging), whose GPU "time" would only be the queue draining.
    """
    timing = _active
    if timing is None:
        return _NO_OP
    return _Phase(timing, name, device)


class CollectorPauses:
    """A `gc.callbacks` hook: sums the pauses of the collections that run while it is installed, and counts the full
    ones (generation 2)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.full = 0
        self._start = 0.0

    def __call__(self, stage: str, info: dict[str, int]) -> None:
        if stage == "start":
            self._start = time.perf_counter()
            return
        self.seconds += time.perf_counter() - self._start
        self.full += info["generation"] == 2


class StepTiming:
    """The phases of one step: host seconds summed per name, CUDA event pairs kept unread until `resolve`."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.wall_s: float | None = None
        """The step's host wall time, set when the step closes."""
        self._host_s: dict[str, float] = {}
        self._events: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []
        self._open: set[str] = set()
        self._resolved: dict[str, float] | None = None
        self._on_gc = CollectorPauses()
        """The `gc.callbacks` hook the step installs while it is open."""

    def resolve(self) -> dict[str, float]:
        """The step's times in milliseconds, as flat metric keys.

        `ms_<phase>` is the GPU time between the phase's events where they were recorded, else the host time;
        `host_ms_<phase>` the host time of the GPU-timed phases; `ms_gc` the garbage collector's pauses; `ms_step` the
        step's host wall time. Waits for the step's events (a no-op once the GPU is past them, as after the loss
        values' transfer); cached.

        Raises:
            RuntimeError: the step is still open.
        """
        if self.wall_s is None:
            raise RuntimeError("resolve() called on a step that is still being timed; close it first")
        if self._resolved is None:
            for _, _, end in self._events:
                end.synchronize()
            gpu_ms: dict[str, float] = {}
            for name, start, end in self._events:
                gpu_ms[name] = gpu_ms.get(name, 0.0) + start.elapsed_time(end)
            times: dict[str, float] = {}
            for name, host_s in self._host_s.items():
                if name in gpu_ms:
                    times[f"ms_{name}"] = gpu_ms[name]
                    times[f"host_ms_{name}"] = host_s * 1e3
                else:
                    times[f"ms_{name}"] = host_s * 1e3
            times["ms_gc"] = self._on_gc.seconds * 1e3
            times["ms_step"] = self.wall_s * 1e3
            self._resolved, self._events = times, []  # the events are no longer needed
        return dict(self._resolved)


class _Phase:
    """One timed region of a step (a class, not a generator context manager: it runs several times per micro-batch)."""

    __slots__ = ("_timing", "_name", "_device", "_skip", "_start", "_t0")

    def __init__(self, timing: StepTiming, name: str, device: bool) -> None:
        if name in ("step", "gc"):
            raise ValueError(
                f'phase name "{name}" is reserved (ms_step: the whole step, ms_gc: collector pauses); choose another'
            )
        self._timing, self._name, self._device = timing, name, device

    def __enter__(self) -> None:
        timing = self._timing
        self._skip = self._name in timing._open
        if self._skip:
            return
        timing._open.add(self._name)
        timing._host_s.setdefault(self._name, 0.0)  # keys in the order phases first open: forward before encode
        self._start: torch.cuda.Event | None = None
        if timing.cuda and self._device:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        self._t0 = time.perf_counter()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._skip:
            return
        timing, name = self._timing, self._name
        timing._host_s[name] += time.perf_counter() - self._t0
        if self._start is not None:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            timing._events.append((name, self._start, end))
        timing._open.discard(name)


class StepTimer:
    """Opens the timed steps of a run; while one is open, `phase(...)` anywhere records into it.

    Args:
        cuda: time GPU-side phases with CUDA events too (the model runs on a CUDA device); False: host clock only.
    """

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda

    @contextmanager
    def step(self) -> Iterator[StepTiming]:
        """Time one step; the yielded `StepTiming` gets its wall time when the block ends (also on an error).

        Raises:
            RuntimeError: another step is already being timed in this process.
        """
        global _active
        if _active is not None:
            raise RuntimeError("a step is already being timed; steps do not nest (use phase() inside it)")
        timing = StepTiming(self.cuda)
        _active = timing
        gc.callbacks.append(timing._on_gc)
        start = time.perf_counter()
        try:
            yield timing
        finally:
            timing.wall_s = time.perf_counter() - start
            gc.callbacks.remove(timing._on_gc)
            _active = None
