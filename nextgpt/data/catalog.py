"""The dataset catalog (`configs/datasets.yaml`): name -> annotation file, kind and the dataset's OWN folders.

Catalog file layout: `base_dir` (optional; relative to the YAML file, default its folder) anchors relative paths,
`datasets` maps each name to `DatasetEntryConfig` fields. Each entry keeps its own folders (the original let the
last entry's folders override all of them).

    catalog = load_catalog(Path("configs/datasets.yaml"))
    validate_datasets(["cc3m_enc", "webvid_enc"], catalog)   # one error listing every missing file / folder
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from nextgpt.config import DatasetEntryConfig
from nextgpt.config_loader import ConfigError, find_config_file, from_dict
from nextgpt.constants import MODALITIES
from nextgpt.data.records import load_records

logger = logging.getLogger(__name__)

PATH_FIELDS = ("annotation_path", "image_dir", "video_dir", "audio_dir", "caption_embed_dir")
_TAG_PATTERNS = {m: re.compile(rf"<{m.value.capitalize()}>.*?</{m.value.capitalize()}>") for m in MODALITIES}


def _resolve(entry: DatasetEntryConfig, base_dir: Path) -> DatasetEntryConfig:
    for name in PATH_FIELDS:
        value = getattr(entry, name)
        if value is not None and not Path(value).is_absolute():
            setattr(entry, name, base_dir / value)
    return entry


def load_catalog(path: Path) -> dict[str, DatasetEntryConfig]:
    """Read a catalog YAML into typed entries with absolute (or base-anchored) paths.

    Args:
        path: the catalog file, e.g. `configs/datasets.yaml`.

    Returns:
        name -> `DatasetEntryConfig`; relative paths are joined to the (absolute, normalised) `base_dir`.

    Raises:
        FileNotFoundError: the file does not exist.
        ConfigError: bad layout, or an unknown key / wrong type in an entry (named `<name>.<key>`).
    """
    try:
        path = find_config_file(path, "dataset catalog (data.catalog_path)")
    except ConfigError as err:
        raise FileNotFoundError(str(err)) from None
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict) or set(data) - {"base_dir", "datasets"} or not isinstance(data.get("datasets"), dict):
        raise ConfigError(
            f"dataset catalog {path} must be a mapping with 'datasets' (name -> entry) and optional 'base_dir', "
            f"got keys {sorted(data) if isinstance(data, dict) else type(data).__name__}"
        )
    base_dir = Path(os.path.normpath(path.parent.absolute() / str(data.get("base_dir", "."))))
    catalog: dict[str, DatasetEntryConfig] = {}
    for name, fields in data["datasets"].items():
        if not isinstance(fields, dict):
            raise ConfigError(f"catalog entry '{name}' must be a mapping of DatasetEntryConfig fields, got {fields!r}")
        if "annotation_path" not in fields:
            raise ConfigError(f"catalog entry '{name}' needs 'annotation_path'")
        catalog[str(name)] = _resolve(from_dict(DatasetEntryConfig, fields, prefix=str(name)), base_dir)
    return catalog


def closest_name(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate most similar to `name` (None when there are no candidates)."""
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.0)
    return matches[0] if matches else None


def needed_folders(records: Sequence[dict[str, Any]]) -> set[str]:
    """The entry folder fields (`image_dir`, …, `caption_embed_dir`) that some record refers to.

    Args:
        records: the annotation records of one dataset.

    Returns:
        Field names of `DatasetEntryConfig` the records need.
    """
    needed: set[str] = set()
    for record in records:
        if not isinstance(record, dict):
            continue
        for m in MODALITIES:
            if record.get(f"input_{m.value}") or record.get(f"output_{m.value}"):
                needed.add(f"{m.value}_dir")
            if record.get(f"{m.value}_caption_embeddings") or record.get(f"{m.value}_list"):
                needed.add("caption_embed_dir")
        turns = record.get("conversations", record.get("conversation"))
        for turn in turns if isinstance(turns, list) else []:
            value = turn.get("value") if isinstance(turn, dict) else None
            if isinstance(value, str) and turn.get("from") in ("human", "user"):
                needed.update(f"{m.value}_dir" for m in MODALITIES if _TAG_PATTERNS[m].search(value))
    return needed


def _entry_problems(name: str, entry: DatasetEntryConfig) -> list[str]:
    """Missing annotation file, or folders the records need that are unset or absent."""
    annotation = Path(entry.annotation_path)
    if not annotation.is_file():
        return [f"{name}: annotation file {annotation} does not exist"]
    try:
        records = load_records(annotation)
    except ValueError as err:
        return [f"{name}: {err}"]
    problems = []
    for field_name in sorted(needed_folders(records)):
        folder = getattr(entry, field_name)
        if folder is None:
            problems.append(f"{name}: records need {field_name} but the entry does not set it")
        elif not Path(folder).is_dir():
            hint = " (run preprocess_embeddings.py)" if field_name == "caption_embed_dir" else ""
            problems.append(f"{name}: {field_name} {folder} does not exist{hint}")
    return problems


def validate_datasets(names: Sequence[str], catalog: dict[str, DatasetEntryConfig]) -> None:
    """Check that every named dataset exists in the catalog and that its files and needed folders exist.

    Args:
        names: dataset names of a run (`data.datasets`).
        catalog: from `load_catalog`.

    Raises:
        ValueError: an unknown name (with the closest catalog name), or one message listing every missing
            annotation file / folder (dataset name and path each).
    """
    if not names:
        raise ValueError("data.datasets is empty; name at least one catalog dataset, e.g. data.datasets=[cc3m_enc]")
    for name in names:
        if name not in catalog:
            suggestion = closest_name(name, catalog)
            hint = f"; did you mean '{suggestion}'?" if suggestion else ""
            raise ValueError(f"dataset '{name}' is not in the catalog{hint} (known: {', '.join(sorted(catalog))})")
    problems = [p for name in dict.fromkeys(names) for p in _entry_problems(name, catalog[name])]
    if problems:
        raise ValueError(f"{len(problems)} dataset problem(s): " + "; ".join(problems))
