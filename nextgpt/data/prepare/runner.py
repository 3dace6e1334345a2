"""Run a conversion: find the datasets, convert record by record, check, write, report.

Layout of `--dataset all` (`--root` holds one folder per dataset; the official repository's data/ folder works too):
    cc3m/ webvid/ audiocap/        (or T_X_pair_data/<name>/)
    llava/ alpaca/ videochat/      (or IT_data/T+X-T_data/<name>/)
    t2m/                           (or IT_data/T-T+X_data/)
    mosit/                         (or IT_data/MosIT_data/)
Each folder holds the files its converter's module names (pairs.py, instructions.py, t2m.py).

Every output record is parsed with the training parser (`parse_record`) against the catalog entry it is written for,
and the files it names are checked, so a written record is one training can read. Bad records are skipped and counted,
never written.

    reports = prepare(PrepareOptions(dataset="cc3m", root=Path("raw/cc3m"), out=Path("data/prepared")))
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm import tqdm

from nextgpt.config import DatasetEntryConfig
from nextgpt.constants import Modality
from nextgpt.data.prepare.converter import Converted, Converter, DatasetSource, OutputSpec, RawItem
from nextgpt.data.prepare.instructions import AlpacaConverter, LlavaConverter, VideoChatConverter
from nextgpt.data.prepare.options import DATASETS, PrepareOptions
from nextgpt.data.prepare.outputs import (
    CATALOG_FILE,
    REPORT_FILE,
    check_output_folder,
    update_catalog,
    update_report,
    write_json,
)
from nextgpt.data.prepare.pairs import PAIR_LAYOUTS, PairConverter
from nextgpt.data.prepare.report import DatasetReport, Skip
from nextgpt.data.prepare.sources import check_media_file, first_existing
from nextgpt.data.prepare.t2m import MositConverter, T2MConverter
from nextgpt.data.records import MalformedRecordError, parse_record

logger = logging.getLogger(__name__)

DATASET_FOLDERS = {
    "cc3m": ("cc3m", "T_X_pair_data/cc3m"),
    "webvid": ("webvid", "T_X_pair_data/webvid"),
    "audiocap": ("audiocap", "T_X_pair_data/audiocap"),
    "llava": ("llava", "IT_data/T+X-T_data/llava"),
    "alpaca": ("alpaca", "IT_data/T+X-T_data/alpaca"),
    "videochat": ("videochat", "IT_data/T+X-T_data/videochat"),
    "t2m": ("t2m", "IT_data/T-T+X_data"),
    "mosit": ("mosit", "IT_data/MosIT_data"),
}
"""Folders looked for under `--root` with `--dataset all`, first match wins."""


def build_converter(dataset: str, source: DatasetSource, options: PrepareOptions) -> Converter:
    """The converter of one dataset; it reads its raw annotation file now.

    Raises:
        FileNotFoundError / ValueError: missing files or folders, unreadable JSON (one line naming the fix).
    """
    if dataset in PAIR_LAYOUTS:
        return PairConverter(PAIR_LAYOUTS[dataset], source, options)
    converters = {
        "llava": LlavaConverter,
        "alpaca": AlpacaConverter,
        "videochat": VideoChatConverter,
        "t2m": T2MConverter,
        "mosit": MositConverter,
    }
    return converters[dataset](source, options)


def find_sources(options: PrepareOptions) -> dict[str, DatasetSource]:
    """The datasets of this run and their folders.

    Raises:
        FileNotFoundError: `--dataset all` and no dataset folder under the root.
    """
    if options.dataset != "all":
        return {options.dataset: DatasetSource(options.root, options.annotation, options.media_dir)}
    sources = {}
    for name in DATASETS:
        folder = first_existing(options.root, DATASET_FOLDERS[name])
        if folder is not None and folder.is_dir():
            sources[name] = DatasetSource(folder)
        else:
            logger.info("%s: no folder under %s, not converted", name, options.root)
    if not sources:
        raise FileNotFoundError(
            f"--dataset all: {options.root} holds none of the folders {', '.join(DATASETS)}; "
            "pass the folder that holds them, or one --dataset with its own --root"
        )
    return sources


def _entry(spec: OutputSpec, out_dir: Path, embed_dir: Path) -> DatasetEntryConfig:
    """The catalog entry an output's records are checked against (and then written as)."""
    dirs = {f"{m.value}_dir": Path(os.path.abspath(d)) for m, d in spec.media_dirs.items()}
    return DatasetEntryConfig(
        annotation_path=out_dir / spec.file_name,
        kind=spec.kind,
        caption_embed_dir=Path(os.path.abspath(embed_dir)) if spec.embeddings else None,
        **dirs,
    )


def _catalog_fields(entry: DatasetEntryConfig, out: Path) -> dict[str, str]:
    """An entry as catalog YAML: paths inside `out` relative to it (the fragment's folder), others absolute."""
    root = Path(os.path.abspath(out))
    fields: dict[str, str] = {}
    for key in ("annotation_path", "kind", "image_dir", "video_dir", "audio_dir", "caption_embed_dir"):
        value = getattr(entry, key)
        if value is None:
            continue
        if isinstance(value, Path):
            path = Path(os.path.abspath(value))
            value = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()
        fields[key] = value
    return fields


def _limited(items: list[RawItem], limit: int | None) -> list[RawItem]:
    """The first `limit` items of each group."""
    if limit is None:
        return items
    taken: Counter[str] = Counter()
    kept = []
    for item in items:
        if taken[item.group] < limit:
            taken[item.group] += 1
            kept.append(item)
    return kept


class _Checker:
    """Checks converted records against the training parser, their files and what earlier records used."""

    def __init__(self, entries: dict[str, DatasetEntryConfig]) -> None:
        self.entries = entries
        self.seen: dict[str, set[str]] = {}
        self.captions: dict[Path, str] = {}

    def check(self, converted: Converted) -> None:
        """Raise `Skip` for the first problem; remember the record's keys only when it passes."""
        for reason, key in converted.unique.items():
            if key in self.seen.get(reason, ()):
                raise Skip(reason, f"{key!r} appeared in an earlier record")
        embeddings: dict[Path, str] = {}
        for name, record in converted.records.items():
            try:
                spec = parse_record(record, self.entries[name])
            except MalformedRecordError as err:
                raise Skip("malformed_record", str(err)) from None
            media = list(spec.input_media) + [
                (t.modality, p) for t, p in zip(spec.targets, spec.target_media, strict=True) if p is not None
            ]
            for modality, path in media:
                check_media_file(path, Modality(modality))
            for target in spec.targets:
                if target.embedding_path is None:
                    continue
                earlier = self.captions.get(target.embedding_path, embeddings.get(target.embedding_path))
                if earlier is not None and earlier != target.caption:
                    raise Skip(
                        "conflicting_embedding_name",
                        f"{target.embedding_path.name} is named for {earlier!r} and {target.caption!r}",
                    )
                embeddings[target.embedding_path] = target.caption
        for reason, key in converted.unique.items():
            self.seen.setdefault(reason, set()).add(key)
        self.captions.update(embeddings)


def convert_dataset(converter: Converter, options: PrepareOptions) -> DatasetReport:
    """Convert one dataset and write its files, catalog entries and report.

    Returns:
        The dataset's report (also merged into `<out>/report.json`).
    """
    dataset = converter.dataset
    out_dir, embed_dir = options.out / dataset, options.embed_root / dataset
    outputs = converter.outputs()
    entries = {spec.catalog_name: _entry(spec, out_dir, embed_dir) for spec in outputs}
    source = ", ".join(str(p) for p in converter.source_files)
    report = DatasetReport(dataset, source=source, seed=options.seed, limit=options.limit)
    # 1. Convert and check record by record.
    items = _limited(converter.items(), options.limit)
    report.found = len(items)
    checker = _Checker(entries)
    kept: dict[str, list[dict[str, Any]]] = {name: [] for name in entries}
    for item in tqdm(items, desc=dataset, unit="record", disable=not options.progress):
        try:
            if item.skip is not None:
                raise item.skip
            converted = converter.convert(item)
            checker.check(converted)
        except Skip as skip:
            report.skip(skip.reason, item.id, skip.detail)
            continue
        for name, record in converted.records.items():
            kept[name].append(record)
        for note, detail in converted.changes.items():
            report.change(note, item.id, detail)
    # 2. Write the annotation files; an output left without records loses its file and entry.
    catalog: dict[str, dict[str, str]] = {}
    for spec in outputs:
        path = out_dir / spec.file_name
        report.written[spec.file_name] = len(kept[spec.catalog_name])
        if not kept[spec.catalog_name]:
            logger.warning("%s: no usable record for %s; nothing written", dataset, spec.file_name)
            path.unlink(missing_ok=True)
            continue
        write_json(path, kept[spec.catalog_name])
        catalog[spec.catalog_name] = _catalog_fields(entries[spec.catalog_name], options.out)
        report.catalog_names.append(spec.catalog_name)
    # 3. Merge the catalog entries and the report into the output folder.
    empty = tuple(name for name in entries if name not in catalog)
    update_catalog(options.out / CATALOG_FILE, catalog, remove=empty)
    update_report(options.out / REPORT_FILE, {dataset: report.to_dict()})
    return report


def prepare(options: PrepareOptions) -> list[DatasetReport]:
    """Convert the datasets of `options` into `options.out`.

    Every converter reads its raw files before anything is written, so bad input stops the run with nothing changed.

    Returns:
        One report per dataset, in `DATASETS` order.

    Raises:
        FileNotFoundError / ValueError: bad input (missing folder or file, unreadable JSON), one line naming the fix.
    """
    check_output_folder(options.out)
    converters = [build_converter(name, source, options) for name, source in find_sources(options).items()]
    return [convert_dataset(converter, options) for converter in converters]
