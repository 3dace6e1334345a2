"""The shape every dataset converter has: where it reads, what it writes, and one raw record -> output records.

A converter reads its raw files when built (bad input raises one line), lists its raw records as `RawItem`s and turns
one item into output records (`Converted`) or raises `Skip`. Everything shared — limits, duplicate checks, checking
each output record with the training parser, writing files, the catalog and the report — is the runner's.

    converter = PairConverter(CC3M, source, options)
    for item in converter.items():
        converted = converter.convert(item)        # {"cc3m_enc": {...}, "cc3m_dec": {...}} or raises Skip
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from nextgpt.constants import Modality
from nextgpt.data.prepare.report import Skip


@dataclass(frozen=True)
class DatasetSource:
    """Where one dataset's raw download lies.

    Attributes:
        root: the dataset's folder (`--root`, or `<root>/<dataset>` with `--dataset all`).
        annotation: a raw annotation file replacing the layout's default name (`--annotation`).
        media_dir: a media folder replacing the layout's default (`--media-dir`).
    """

    root: Path
    annotation: Path | None = None
    media_dir: Path | None = None


@dataclass(frozen=True)
class OutputSpec:
    """One annotation file a converter writes, and its catalog entry.

    Attributes:
        catalog_name: the entry's name (`cc3m_enc`), as in configs/datasets.yaml.
        file_name: the annotation file inside `<out>/<dataset>/`.
        kind: the entry's kind.
        media_dirs: folders of the media its records name, per modality.
        embeddings: whether its records name caption embeddings (then the entry gets a caption_embed_dir).
    """

    catalog_name: str
    file_name: str
    kind: Literal["x_to_text", "text_to_x", "instruction"]
    media_dirs: dict[Modality, Path] = field(default_factory=dict)
    embeddings: bool = False


@dataclass
class RawItem:
    """One raw record.

    Attributes:
        id: the record's id for the report (its own id field, else `#<index>`).
        record: the raw record as read.
        skip: set when reading it already failed (an image without its caption file, ...).
        group: items of one group share `--limit` (the T2M files are limited one by one).
        index: position in its raw file (seeds the draws of records without a unique id).
    """

    id: str
    record: Any
    skip: Skip | None = None
    group: str = ""
    index: int = 0


@dataclass
class Converted:
    """Output records of one raw item, by catalog name, and keys that must be unique across the dataset.

    Attributes:
        records: catalog name -> the record written to that entry's file.
        unique: skip reason -> key (`{"duplicate_id": "001312382"}`): a later item with the same key is skipped.
    """

    records: dict[str, dict[str, Any]]
    unique: dict[str, str] = field(default_factory=dict)
    changes: dict[str, str] = field(default_factory=dict)
    """note -> detail of documented changes made to the record (counted in the report when it is written)."""


class Converter(Protocol):
    """What the runner needs from a dataset converter."""

    dataset: str
    """The dataset name (`cc3m`)."""
    source_files: list[Path]
    """The raw annotation files read (for the report)."""

    def outputs(self) -> list[OutputSpec]:
        """The files this conversion writes."""
        ...

    def items(self) -> list[RawItem]:
        """The raw records in file order."""
        ...

    def convert(self, item: RawItem) -> Converted:
        """Output records of one raw item.

        Raises:
            Skip: the item cannot be used.
        """
        ...


def make_turns(*values: str) -> list[dict[str, str]]:
    """Alternating human/gpt turns in the official `{from, value}` layout."""
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(values)]
