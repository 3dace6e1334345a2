"""What one dataset's conversion found, wrote and skipped, and why: the report printed and saved by prepare_data.py.

A converter raises `Skip(reason, detail)` for a record it cannot use; the runner counts it under `reason` with the
record's id as an example. Reasons are short stable keys (`missing_media`, `empty_caption`, ...) so reports of two
runs can be compared; `detail` is the first message seen, enough to find the cause.

    report = DatasetReport("cc3m", source="raw/cc3m/cc3m.json", seed=0)
    report.skip("missing_media", "001312382", "image file images/001312382.jpg does not exist")
    print(format_report(report))
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

MAX_EXAMPLES = 5
"""Example ids kept per reason: enough to look a few records up, small enough to print."""

SKIP_REASONS = {
    "malformed_record": "the record does not have the official fields or types",
    "empty_caption": "the caption (or instruction / answer) is empty",
    "missing_media": "the media file it names does not exist",
    "empty_media": "the media file it names is empty (0 bytes)",
    "unknown_extension": "the media file's extension is not one the readers support",
    "unsafe_path": "the media name is absolute or climbs out of the dataset folder with '..'",
    "duplicate_id": "an earlier record has the same id",
    "duplicate_media": "an earlier record names the same media file (its caption embedding would be overwritten)",
    "conflicting_embedding_name": "an earlier record gives the same caption-embedding name to another caption",
    "known_bad_clip": "the original authors listed the clip as broken",
    "missing_caption_file": "an image of the img2dataset folder has no .txt caption beside it",
}
"""Every skip reason with its meaning (saved in each report so the file explains itself)."""


class Skip(Exception):
    """A record that cannot be used; `reason` is a key of `SKIP_REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in SKIP_REASONS, reason
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def record_object(record: Any) -> dict[str, Any]:
    """The record itself when it is a JSON object.

    Raises:
        Skip: malformed_record otherwise.
    """
    if not isinstance(record, dict):
        raise Skip("malformed_record", f"record must be a JSON object, got {type(record).__name__}")
    return record


@dataclass
class ReasonCount:
    """How often one reason occurred, a few example ids and the first message."""

    count: int = 0
    examples: list[str] = field(default_factory=list)
    detail: str = ""

    def add(self, example_id: str, detail: str) -> None:
        self.count += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(example_id)
        self.detail = self.detail or detail


@dataclass
class DatasetReport:
    """One dataset's conversion.

    Attributes:
        dataset: the dataset name (`cc3m`, `t2m`, ...).
        source: the raw annotation file(s) read.
        seed: seed of the prompt draws.
        limit: `--limit` when one was given.
        found: raw records read.
        written: output file -> records written to it.
        skipped: reason -> records skipped for it.
        changed: note -> records kept after a documented change (a user-side media tag without its file dropped, ...).
        catalog_names: catalog entries the conversion wrote.
    """

    dataset: str
    source: str
    seed: int
    limit: int | None = None
    found: int = 0
    written: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, ReasonCount] = field(default_factory=dict)
    changed: dict[str, ReasonCount] = field(default_factory=dict)
    catalog_names: list[str] = field(default_factory=list)

    def skip(self, reason: str, example_id: str, detail: str) -> None:
        """Count one skipped record."""
        self.skipped.setdefault(reason, ReasonCount()).add(example_id, detail)

    def change(self, note: str, example_id: str, detail: str) -> None:
        """Count one record kept with a change."""
        self.changed.setdefault(note, ReasonCount()).add(example_id, detail)

    @property
    def num_skipped(self) -> int:
        return sum(r.count for r in self.skipped.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, with the meaning of each skip reason that occurred."""
        data = asdict(self)
        data["num_skipped"] = self.num_skipped
        data["reasons"] = {reason: SKIP_REASONS[reason] for reason in self.skipped}
        return data


def format_report(report: DatasetReport) -> str:
    """A few lines for the terminal: counts per file, then one line per skip reason and change."""
    files = ", ".join(f"{name} {count}" for name, count in report.written.items()) or "nothing"
    lines = [f"{report.dataset}: {report.found} found, {report.num_skipped} skipped; written: {files}"]
    for title, reasons in (("skipped", report.skipped), ("changed", report.changed)):
        for reason, entry in sorted(reasons.items(), key=lambda kv: -kv[1].count):
            lines.append(f"  {title} {reason}: {entry.count} (e.g. {', '.join(entry.examples)}) - {entry.detail}")
    return "\n".join(lines)
