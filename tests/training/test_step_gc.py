"""StepGC: no automatic collection inside a step, the step's cyclic garbage collected at its end, long-lived garbage
at every full_every-th step, and the collector restored afterwards."""

from __future__ import annotations

import gc
import sys
import weakref
from pathlib import Path

import pytest
from stage_helpers import quick_cfg

from nextgpt.training.step_gc import StepGC


class _Node:
    """A cyclic object whose death a weak reference can observe."""

    def __init__(self) -> None:
        self.me = self


def _cycle() -> weakref.ref:
    return weakref.ref(_Node())  # unreachable at once, but freed only by a collection (the self-reference)


@pytest.fixture(autouse=True)
def _collector_restored():
    enabled, threshold = gc.isenabled(), gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)
    (gc.enable if enabled else gc.disable)()


def test_no_automatic_collection_inside_a_step():
    gc.enable()
    gc.set_threshold(1)  # outside StepGC this collects at nearly every allocation
    collections = []
    watch = lambda phase, info: phase == "start" and collections.append(info["generation"])  # noqa: E731
    with StepGC():
        assert not gc.isenabled()
        dead = _cycle()
        gc.callbacks.append(watch)
        try:
            kept = [[object()] for _ in range(1000)]  # container allocations: each would trigger a collection
        finally:
            gc.callbacks.remove(watch)
        assert len(kept) == 1000 and collections == []
        assert dead() is not None, "nothing collects during a step"
    assert gc.isenabled(), "the collector is enabled again, as it was before"


def test_end_step_collects_young_cycles_every_step_and_old_ones_on_full_steps():
    with StepGC(full_every=3) as collector:
        young = _cycle()
        collector.end_step(1)
        assert young() is None, "a step's cyclic garbage is collected at its end"

        holder = [_Node()]
        old = weakref.ref(holder[0])
        collector.end_step(2)  # still referenced: it survives the young collection and moves to an older generation
        holder.clear()
        assert old() is not None
        collector.end_step(4)  # not a full step: the older generations are left alone
        assert old() is not None
        collector.end_step(6)
        assert old() is None, "every full_every-th step collects the oldest generation too"


def test_the_setup_is_frozen_inside_and_everything_restored_after():
    setup = [_Node() for _ in range(10)]
    gc.disable()
    with StepGC():
        assert gc.get_freeze_count() >= len(setup), "what lives when training starts is frozen"
        frozen_dead = weakref.ref(setup.pop())
        gc.collect()
        assert frozen_dead() is not None, "a frozen object that dies in a cycle waits for the end of training"
    assert gc.get_freeze_count() == 0
    assert not gc.isenabled(), "a collector the caller had disabled stays disabled"
    gc.collect()
    assert frozen_dead() is None


def test_full_every_must_be_positive():
    with pytest.raises(ValueError, match="full_every must be >= 1"):
        StepGC(full_every=0)


def _inside(code_name: str) -> bool:
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == code_name and "nextgpt/model.py" in frame.f_code.co_filename.replace("\\", "/"):
            return True
        frame = frame.f_back
    return False


def test_the_loop_never_collects_inside_the_model_forward(tiny_root: Path, tiny_world: Path, tmp_path: Path):
    from nextgpt.training.loop import run

    starts_in_forward = []

    def watch(phase: str, info: dict) -> None:
        if phase == "start" and _inside("forward"):
            starts_in_forward.append(info["generation"])

    cfg = quick_cfg(tiny_root, tiny_world, tmp_path / "run", "train.max_steps=3")
    gc.enable()
    gc.set_threshold(50)  # the default collector would now collect every 50 allocations, forwards included
    gc.callbacks.append(watch)
    try:
        run(cfg)
    finally:
        gc.callbacks.remove(watch)
    assert starts_in_forward == []
    assert gc.isenabled() and gc.get_freeze_count() == 0
