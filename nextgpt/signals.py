"""Find signal-token spans in token-id sequences (training targets and generated replies alike).

A span is complete when a modality's span ids appear consecutively and in order (`<image_00>` … `<image_03>`; with
the NEW code's separator, `<image_00> ▁ <image_01> …`, see `nextgpt.llm.tokenizer.signal_token_ids`).
Anything else containing signal ids (a partial run, ids out of order, a span cut by the end of the sequence) is
reported as a problem string and skipped — never an assertion crash (the original's issues #66/#68).

    scan = find_signal_spans(token_ids, {Modality.IMAGE: [32000, 32001, 32002, 32003]})
    scan.spans[Modality.IMAGE]  # [SignalSpan(row=0, start=17, length=4)]
"""

from __future__ import annotations

from collections.abc import Sequence
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


def find_signal_spans(token_ids: torch.Tensor | Sequence[int], signal_ids: dict[Modality, list[int]]) -> SpanScan:
    """Locate complete signal spans and report malformed signal tokens.

    The scan runs over Python ints on the host: a dataset item (one sequence of a few hundred ids) takes tens of
    microseconds this way, against about half a millisecond for the per-modality tensor operations it replaced, which a
    data loader paid for every sample.

    Args:
        token_ids: (B, L) or (L,) token ids (negative sentinels and padding allowed), a tensor (read on the host) or a
            list of ints for one sequence.
        signal_ids: the signal ids of each modality, in span order.

    Returns:
        A `SpanScan`; spans are sorted by (row, start).
    """
    rows = token_ids.tolist() if isinstance(token_ids, torch.Tensor) else list(token_ids)
    if not rows or not isinstance(rows[0], list):
        rows = [rows]  # (L,) -> (1, L)
    scan = SpanScan(spans={m: [] for m in signal_ids})
    # Ids every modality's span holds (the NEW code's separator between signal tokens) are ordinary text elsewhere.
    shared = set.intersection(*(set(v) for v in signal_ids.values())) if len(signal_ids) > 1 else set()
    relevant = set().union(*(set(v) for v in signal_ids.values()))
    # Per row, the positions of any signal id (most positions of a sequence are text and drop out here).
    hits = [[(pos, tok) for pos, tok in enumerate(row) if tok in relevant] for row in rows]
    for modality, span_ids in signal_ids.items():
        expected = list(span_ids)
        n = len(expected)
        first = expected[0]
        markers = {i for i in expected if i not in shared}
        for row_index, (row, row_hits) in enumerate(zip(rows, hits, strict=True)):
            covered: set[int] = set()
            for pos, tok in row_hits:
                if tok == first and row[pos : pos + n] == expected:
                    scan.spans[modality].append(SignalSpan(row=row_index, start=pos, length=n))
                    covered.update(range(pos, pos + n))
            stray = [pos for pos, tok in row_hits if tok in markers and pos not in covered]
            if stray:
                scan.problems.append(
                    f"malformed {modality.value} signal tokens in row {row_index} at positions {stray[:8]}"
                    f"{' ...' if len(stray) > 8 else ''} (expected {n} consecutive tokens in order); skipped"
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
