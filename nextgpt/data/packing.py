"""Assign samples to packed rows: first-fit decreasing over their lengths after splicing.

Packing puts several samples into one row of at most `model.llm.max_length` rows instead of padding every sample to
the longest one; the model keeps them apart by attending sample by sample (`nextgpt.data.layout`).

    rows = pack_first_fit([120, 30, 200, 90], capacity=256)  # [[2, 1], [0, 3]]
"""

from __future__ import annotations

from collections.abc import Sequence


def pack_first_fit(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Group sample indices into rows whose total length fits `capacity` (first-fit decreasing).

    Samples are placed longest first (ties by index, so the result is deterministic) into the first row with room;
    a row's samples are listed in placement order.

    Args:
        lengths: length of every sample (each at most `capacity`).
        capacity: the longest row.

    Returns:
        Rows of sample indices; every index appears exactly once.

    Raises:
        ValueError: a sample longer than `capacity` or a non-positive capacity.
    """
    if capacity < 1:
        raise ValueError(f"packing capacity must be >= 1, got {capacity}")
    too_long = [(i, n) for i, n in enumerate(lengths) if n > capacity]
    if too_long:
        raise ValueError(
            f"samples {too_long[:4]} (index, length) are longer than the packing capacity {capacity}; "
            "cut them to model.llm.max_length before packing"
        )
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for row, free in enumerate(room):
            if lengths[index] <= free:
                rows[row].append(index)
                room[row] -= lengths[index]
                break
        else:
            rows.append([index])
            room.append(capacity - lengths[index])
    return rows
