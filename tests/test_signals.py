"""Signal-span detection: complete spans are found, malformed ones are reported (never an assertion crash)."""

from __future__ import annotations

import torch

from nextgpt.constants import Modality
from nextgpt.signals import SignalSpan, find_signal_spans, gather_span_rows

IMG = [100, 101, 102, 103]
AUD = [200, 201]
SIGNALS = {Modality.IMAGE: IMG, Modality.AUDIO: AUD}


def test_complete_spans_in_batch_order():
    ids = torch.tensor([[5, *IMG, 6, *AUD, 7], [*AUD, 8, *IMG, 9, 9]])
    scan = find_signal_spans(ids, SIGNALS)
    assert scan.spans[Modality.IMAGE] == [SignalSpan(0, 1, 4), SignalSpan(1, 3, 4)]
    assert scan.spans[Modality.AUDIO] == [SignalSpan(0, 6, 2), SignalSpan(1, 0, 2)]
    assert scan.problems == []


def test_malformed_spans_are_reported_and_skipped():
    truncated = torch.tensor([1, 2, 100, 101, 102])  # cut by the end of the reply
    out_of_order = torch.tensor([100, 102, 101, 103, 5, 201, 200])
    scan = find_signal_spans(truncated, SIGNALS)
    assert scan.count(Modality.IMAGE) == 0
    assert len(scan.problems) == 1 and "malformed image" in scan.problems[0] and "[2, 3, 4]" in scan.problems[0]
    scan = find_signal_spans(out_of_order, SIGNALS)
    assert scan.count(Modality.IMAGE) == 0 and scan.count(Modality.AUDIO) == 0
    assert {p.split()[1] for p in scan.problems} == {"image", "audio"}


def test_repeated_first_token_does_not_double_count():
    ids = torch.tensor([100, *IMG, *IMG])
    scan = find_signal_spans(ids, SIGNALS)
    assert [s.start for s in scan.spans[Modality.IMAGE]] == [1, 5]
    assert len(scan.problems) == 1  # the lone leading 100


def _brute_force_scan(rows: list[list[int]], signal_ids: dict) -> tuple[dict, list[tuple[str, int, list[int]]]]:
    """Spans and stray positions by checking every window of every row (the definition, slowly)."""
    shared = set.intersection(*(set(v) for v in signal_ids.values()))
    spans, strays = {}, []
    for modality, expected in signal_ids.items():
        n = len(expected)
        spans[modality] = [(r, s) for r, row in enumerate(rows) for s in range(len(row)) if row[s : s + n] == expected]
        for r, row in enumerate(rows):
            covered = {p for rr, s in spans[modality] if rr == r for p in range(s, s + n)}
            stray = [p for p, t in enumerate(row) if t in set(expected) - shared and p not in covered]
            if stray:
                strays.append((modality.value, r, stray[:8]))
    return spans, strays


def test_scan_agrees_with_checking_every_window_on_random_rows():
    generator = torch.Generator().manual_seed(0)
    separator = 7  # the NEW code's separator: in every modality's span, ordinary text elsewhere
    signal_ids = {Modality.IMAGE: [100, 7, 101, 7, 102], Modality.AUDIO: [200, 7, 201]}
    alphabet = torch.tensor([1, 2, separator, 100, 101, 102, 200, 201, -1])
    for _ in range(200):
        rows = alphabet[torch.randint(len(alphabet), (3, 24), generator=generator)]
        # plant complete spans so that every row has some
        rows[0, 2:7] = torch.tensor(signal_ids[Modality.IMAGE])
        rows[1, 10:13] = torch.tensor(signal_ids[Modality.AUDIO])
        scan = find_signal_spans(rows, signal_ids)
        spans, strays = _brute_force_scan(rows.tolist(), signal_ids)
        for modality in signal_ids:
            assert [(s.row, s.start) for s in scan.spans[modality]] == spans[modality]
        expected_problems = [f"malformed {m} signal tokens in row {r} at positions {stray}" for m, r, stray in strays]
        assert [p.split(" (expected")[0].removesuffix(" ...") for p in scan.problems] == expected_problems
        one_row = find_signal_spans(rows[1].tolist(), signal_ids)  # a list of ids, as a dataset passes it
        assert [(s.row, s.start) for s in one_row.spans[Modality.AUDIO]] == [
            (0, s) for r, s in spans[Modality.AUDIO] if r == 1
        ]


def test_gather_span_rows_picks_span_positions():
    values = torch.arange(2 * 6 * 3).reshape(2, 6, 3).float()
    rows = gather_span_rows(values, [SignalSpan(0, 1, 2), SignalSpan(1, 3, 2)])
    assert rows.shape == (2, 2, 3)
    assert torch.equal(rows[0], values[0, 1:3]) and torch.equal(rows[1], values[1, 3:5])
