"""Python's garbage collector at step boundaries, not in the middle of a step.

Why: a training step allocates thousands of Python objects that live from the forward to the backward (the autograd
contexts of the compiled decoder layers and the metadata they attach to saved tensors). Under the collector's default
thresholds they trigger young collections in the middle of forwards, and while the layers compile, full collections
that walk every object of the process (hundreds of thousands once a model, DeepSpeed and the data are set up). A
step that is partly host-bound (the GPU waits for the host to queue kernels) loses those pauses outright, and under
data parallelism one rank's pause stalls every rank at the next all-reduce. Measured at the 7B depth on a CPU
(docs/benchmarks.md) the steady-state cost is small, about 1.7 ms a step; what this buys is mostly that pauses fall
at the same, known point of every step and every rank, and that `ms_gc` shows them.

So while the loop trains (`StepGC` as a context manager around it):
- everything that exists when training starts (model, optimizer, data) is frozen once: no collection walks it again;
- automatic collection is off;
- each step ends with a collection of the youngest generation (`end_step`, `gc.collect(0)`: the same on every Python;
  `gc.collect(1)` became "the young generation and an increment of the old one" with 3.14's incremental collector):
  the step's own cyclic garbage is reclaimed at the step's end, at the same point on every rank;
- every `full_every` steps a full collection also reclaims long-lived objects created during training (compiled
  graphs, metric records) that have since become garbage.
Leaving restores the collector as it was (enabled or not) and unfreezes, so frozen objects that died in reference
cycles during training are collected again. Which objects are freed never changes: only when.
"""

from __future__ import annotations

import gc
from types import TracebackType

FULL_EVERY = 100
"""Steps between full collections: each walks what training created since it started (mostly the compiled graphs),
tens of milliseconds on a CPU, so averaged over the steps between it stays under a millisecond a step."""


class StepGC:
    """Freeze the setup's objects and collect at step boundaries only (see the module docstring).

    with StepGC() as collector:
        for step in range(1, total + 1):
            train_one_step()
            collector.end_step(step)
    """

    def __init__(self, full_every: int = FULL_EVERY) -> None:
        if full_every < 1:
            raise ValueError(f"full_every must be >= 1, got {full_every}")
        self.full_every = full_every
        self._was_enabled = True

    def __enter__(self) -> StepGC:
        self._was_enabled = gc.isenabled()
        gc.disable()
        gc.collect()  # the setup's garbage goes now, so what is frozen is what lives
        gc.freeze()
        return self

    def end_step(self, step: int) -> None:
        """Collect after optimizer step `step` (1-based): the youngest generation, and everything unfrozen on every
        `full_every`-th step."""
        gc.collect(2 if step % self.full_every == 0 else 0)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        gc.unfreeze()
        if self._was_enabled:
            gc.enable()
