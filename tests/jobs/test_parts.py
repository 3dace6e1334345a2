"""Splitting files between parts: every key in exactly one part, each part a fair share, the same answer every time."""

from __future__ import annotations

import pytest

from nextgpt.jobs.parts import check_part, part_of


@pytest.mark.parametrize("num_parts", [2, 3, 8])
def test_counter_named_files_spread_over_every_part(num_parts: int):
    keys = [f"image/{i:06d}.png" for i in range(4000)]  # names that differ only in a counter (a linear hash fails)
    counts = [0] * num_parts
    for key in keys:
        counts[part_of(key, num_parts)] += 1
    share = len(keys) / num_parts
    assert all(abs(count - share) < 0.15 * share for count in counts), counts
    assert [part_of(key, num_parts) for key in keys[:50]] == [part_of(key, num_parts) for key in keys[:50]]
    assert {part_of(key, 1) for key in keys} == {0}


@pytest.mark.parametrize("part", [(2, 2), (-1, 2), (0, 0)])
def test_bad_parts_are_refused(part):
    with pytest.raises(ValueError, match="0 <= i < n"):
        check_part(part)
