"""Find signal-token spans in token-id sequences (training targets and generated replies alike).

A span is complete when a modality's span ids appear consecutively and in order (`<image_00>` … `<image_03>`; with
the NEW code's separator, `<image_00> ▁ <image_01> …`, see `nextgpt.llm.tokenizer.signal_token_ids`).
Anything else containing signal ids (a partial run, ids out of order, a span cut by the end of the sequence) is
reported as a problem string and skipped — never an assertion crash (the original's issues #66/#68).

    scan = find_signal_spans(token_ids, {Modality.IMAGE: [32000, 32001, 32002, 32003]})
    scan.spans[Modality.IMAGE]  # [SignalSpan(row=0, start=17, length=4)]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from nextgpt.constants import Modality
from nextgpt.utils.devices import copy_to_device


@dataclass(frozen=True)
class SignalSpan:
    """One complete signal span: row in the batch, position of its first token, number of tokens."""

    row: int
    start: int
    length: int


@dataclass
class SpanScan:
    """Result of `find_signal_spans`: complete spans per modality (row-major order) and problems found."""

    spans: dict[Modality, list[SignalSpan]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def count(self, modality: Modality) -> int:
        """Number of complete spans of `modality`."""
        return len(self.spans.get(modality, []))


def find_signal_spans(token_ids: torch.Tensor, signal_ids: dict[Modality, list[int]]) -> SpanScan:
    """Locate complete signal spans and report malformed signal tokens.

    Args:
        token_ids: (B, L) or (L,) token ids (negative sentinels and padding allowed).
        signal_ids: the signal ids of each modality, in span order.

    Returns:
        A `SpanScan`; spans are sorted by (row, start).
    """
    ids = token_ids.unsqueeze(0) if token_ids.dim() == 1 else token_ids  # (L,) -> (1, L)
    scan = SpanScan(spans={m: [] for m in signal_ids})
    # Ids every modality's span holds (the NEW code's separator between signal tokens) are ordinary text elsewhere.
    shared = set.intersection(*(set(v) for v in signal_ids.values())) if len(signal_ids) > 1 else set()
    for modality, expected in signal_ids.items():
        n = len(expected)
        expected_t = torch.tensor(expected, device=ids.device)
        markers = torch.tensor([i for i in expected if i not in shared], device=ids.device)
        is_signal = torch.isin(ids, markers)  # (B, L)
        covered = torch.zeros_like(is_signal)
        rows, starts = (ids == expected[0]).nonzero(as_tuple=True)
        for row, start in zip(rows.tolist(), starts.tolist(), strict=True):
            window = ids[row, start : start + n]
            if window.numel() == n and torch.equal(window, expected_t):
                scan.spans[modality].append(SignalSpan(row=row, start=start, length=n))
                covered[row, start : start + n] = True
        stray = is_signal & ~covered  # (B, L) signal ids outside any complete span
        for row in stray.any(dim=1).nonzero(as_tuple=True)[0].tolist():
            positions = stray[row].nonzero(as_tuple=True)[0].tolist()
            scan.problems.append(
                f"malformed {modality.value} signal tokens in row {row} at positions {positions[:8]}"
                f"{' ...' if len(positions) > 8 else ''} (expected {n} consecutive tokens in order); skipped"
            )
    return scan


def gather_span_rows(values: torch.Tensor, spans: list[SignalSpan]) -> torch.Tensor:
    """Gather the rows of each span from a (B, L, D) tensor.

    Args:
        values: (B, L, D) per-position values (hidden states or embeddings).
        spans: complete spans, all of the same length.

    Returns:
        (N_spans, span_len, D).
    """
    if not spans:
        return values.new_zeros((0, 0, values.shape[-1]))
    length = spans[0].length
    # Built on the host and copied from pinned memory without waiting: a plain copy to the GPU would first wait for
    # all the work queued before it (the whole LLM forward).
    coords = copy_to_device(torch.tensor([[s.row, s.start] for s in spans]), values.device)  # (N, 2)
    rows, starts = coords[:, 0], coords[:, 1]
    positions = starts[:, None] + torch.arange(length, device=values.device)  # (N, T)
    return values[rows[:, None], positions]  # (N, T, D)
