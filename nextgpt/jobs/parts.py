"""Splitting an offline job's files between processes or nodes that do not talk to each other.

Every process computes the same assignment from the file's own key (a stable hash, not its position in a list), so
ranks need no coordination and a rerun with the same number of parts gives each rank the same files.

    mine = [key for key in keys if part_of(key, num_parts) == rank]
"""

from __future__ import annotations

import hashlib


def part_of(key: str, num_parts: int) -> int:
    """Which of `num_parts` parts handles `key`: a cryptographic hash of its UTF-8 bytes modulo the count (CRC-32
    would not do: it is linear, so keys that differ only in a counter can all land in one part)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % num_parts


def check_part(part: tuple[int, int]) -> None:
    """Raise ValueError unless `part` is (i, n) with 0 <= i < n."""
    index, num_parts = part
    if num_parts < 1 or not 0 <= index < num_parts:
        raise ValueError(f"part must be (i, n) with 0 <= i < n, got {part}")
