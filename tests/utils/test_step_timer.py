"""StepTimer: phases sum per name, nest, stay a no-op outside a step, and read CUDA events only when resolved."""

from __future__ import annotations

import gc
import time

import pytest

from nextgpt.utils import step_timer
from nextgpt.utils.step_timer import StepTimer, phase


class _Clock:
    """A perf_counter the test advances by hand, so phase times are exact."""

    def __init__(self) -> None:
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now


class _FakeEvent:
    """A stand-in for torch.cuda.Event on a CPU machine: "GPU time" is the fake clock's, scaled by 10."""

    clock: _Clock
    synchronized = 0

    def __init__(self, enable_timing: bool = False) -> None:
        assert enable_timing
        self.at: float | None = None

    def record(self) -> None:
        self.at = self.clock.now

    def synchronize(self) -> None:
        type(self).synchronized += 1

    def elapsed_time(self, end: _FakeEvent) -> float:
        return (end.at - self.at) * 1e4


@pytest.fixture()
def clock(monkeypatch) -> _Clock:
    fake = _Clock()
    monkeypatch.setattr(step_timer, "time", fake)
    return fake


def test_phase_without_a_step_is_a_shared_no_op():
    assert phase("encode") is phase("llm")
    with phase("encode"):
        pass


def test_nested_and_repeated_phases_are_summed_per_name(clock: _Clock):
    timer = StepTimer(cuda=False)
    with timer.step() as timing:
        for _ in range(2):  # two micro-batches
            with phase("data", device=False):
                clock.now += 0.001
            with phase("forward"):
                with phase("encode"):
                    clock.now += 0.002
                with phase("forward"):  # nested in itself: counted once
                    clock.now += 0.003
        clock.now += 0.004  # outside any phase: only in the step
    assert phase("encode") is phase("llm"), "the step is closed"
    times = timing.resolve()
    assert list(times) == ["ms_data", "ms_forward", "ms_encode", "ms_gc", "ms_step"]
    assert times == pytest.approx({"ms_data": 2.0, "ms_forward": 10.0, "ms_encode": 4.0, "ms_gc": 0.0, "ms_step": 16.0})


def test_cuda_phases_record_events_and_read_them_only_when_resolved(clock: _Clock, monkeypatch):
    _FakeEvent.clock, _FakeEvent.synchronized = clock, 0
    monkeypatch.setattr(step_timer.torch.cuda, "Event", _FakeEvent)
    with StepTimer(cuda=True).step() as timing:
        with phase("data", device=False):
            clock.now += 0.001
        for _ in range(2):
            with phase("forward"):
                clock.now += 0.002
    assert _FakeEvent.synchronized == 0, "recording never waits for the GPU"
    times = timing.resolve()
    assert _FakeEvent.synchronized > 0
    assert times == pytest.approx(
        {"ms_data": 1.0, "ms_forward": 40.0, "host_ms_forward": 4.0, "ms_gc": 0.0, "ms_step": 5.0}
    )
    assert timing.resolve() == times  # cached: the events are released


def test_real_clock_times_are_plausible():
    with StepTimer(cuda=False).step() as timing:
        with phase("forward"):
            with phase("llm"):
                time.sleep(0.002)
    times = timing.resolve()
    assert set(times) == {"ms_forward", "ms_llm", "ms_gc", "ms_step"}
    assert 0 < times["ms_llm"] <= times["ms_forward"] <= times["ms_step"]


def test_garbage_collection_pauses_inside_a_step_are_summed(clock: _Clock):
    def pause(stage: str, info: dict) -> None:  # runs after the timer's own hook: each collection "takes" 5 ms
        if stage == "start":
            clock.now += 0.005

    enabled = gc.isenabled()
    gc.disable()  # only the collections below
    try:
        with StepTimer(cuda=False).step() as timing:
            gc.callbacks.append(pause)
            gc.collect(0)
            with phase("forward"):
                gc.collect()
        gc.collect()  # after the step: not counted
    finally:
        gc.callbacks.remove(pause)
        if enabled:
            gc.enable()
    times = timing.resolve()
    assert times == pytest.approx({"ms_forward": 5.0, "ms_gc": 10.0, "ms_step": 10.0})
    assert timing._on_gc not in gc.callbacks, "the hook leaves with the step"


def test_misuse_is_refused_and_an_error_closes_the_step():
    timer = StepTimer(cuda=False)
    with pytest.raises(KeyError):
        with timer.step() as timing:
            with pytest.raises(RuntimeError, match="still being timed"):
                timing.resolve()
            with pytest.raises(RuntimeError, match="do not nest"):
                with timer.step():
                    pass
            for reserved in ("step", "gc"):
                with pytest.raises(ValueError, match="reserved"):
                    phase(reserved)
            with phase("forward"):
                raise KeyError("boom")
    assert set(timing.resolve()) == {"ms_forward", "ms_gc", "ms_step"}
    with timer.step():  # the failed step no longer counts as open
        pass
