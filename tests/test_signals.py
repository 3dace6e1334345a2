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


def test_gather_span_rows_picks_span_positions():
    values = torch.arange(2 * 6 * 3).reshape(2, 6, 3).float()
    rows = gather_span_rows(values, [SignalSpan(0, 1, 2), SignalSpan(1, 3, 2)])
    assert rows.shape == (2, 2, 3)
    assert torch.equal(rows[0], values[0, 1:3]) and torch.equal(rows[1], values[1, 3:5])
