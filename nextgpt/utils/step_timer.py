"""Per-step phase timing (placeholder: phases are no-ops until a timer is active)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Mark a named phase of the current training step (no-op without an active timer)."""
    yield
