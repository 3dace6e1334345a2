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
from nextgpt.data.records import MalformedRecordError, load_records, parse_record

logger = logging.getLogger(__name__)

PATH_FIELDS = ("annotation_path", "image_dir", "video_dir", "audio_dir", "caption_embed_dir")
_MEDIA_NAMES = tuple(m.value for m in MODALITIES)
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
            if record.get(f"input_{m.value}") or record.get(f"output_{m.value}") or record.get(f"{m.value}_path"):
                needed.add(f"{m.value}_dir")
            if record.get(f"{m.value}_caption_embeddings") or record.get(f"{m.value}_list"):
                needed.add("caption_embed_dir")
        turns = record.get("conversations", record.get("conversation"))
        for turn in turns if isinstance(turns, list) else []:
            value = turn.get("value") if isinstance(turn, dict) else None
            if isinstance(value, str) and turn.get("from") in ("human", "user"):
                needed.update(f"{m.value}_dir" for m in MODALITIES if _TAG_PATTERNS[m].search(value))
            if isinstance(turn, dict) and turn.get("output_modality") in _MEDIA_NAMES:
                needed.add("caption_embed_dir")  # a legacy T2M answer: its embedding is named by mm_name
    return needed


MEDIA_SAMPLE_SIZE = 64
"""Files per dataset and folder that `validate_datasets` looks at: enough to tell a wrong folder from a few bad files."""


def _sampled_file_problems(
    name: str, entry: DatasetEntryConfig, records: Sequence[Any], media: bool, embeddings: bool
) -> list[str]:
    """A folder none of whose first files exist (or all empty): a wrong `*_dir` / missing embeddings, found in
    milliseconds instead of after a whole epoch of skipped samples.

    Args:
        name: catalog name.
        entry: its catalog entry.
        records: its annotation records.
        media: check input media files (False when a feature cache replaces them).
        embeddings: check caption-embedding files (False before preprocess_embeddings.py wrote them).
    """
    files: dict[str, list[Path]] = {}
    for record in records:
        try:
            spec = parse_record(record, entry)
        except MalformedRecordError:
            continue
        named = [(f"{m.value}_dir", p) for m, p in spec.input_media] if media else []
        if embeddings:
            named += [("caption_embed_dir", t.embedding_path) for t in spec.targets if t.embedding_path is not None]
        for field_name, path in named:
            if len(files.setdefault(field_name, [])) < MEDIA_SAMPLE_SIZE:
                files[field_name].append(path)
        if files and all(len(f) >= MEDIA_SAMPLE_SIZE for f in files.values()):
            break
    problems = []
    for field_name, paths in sorted(files.items()):
        present = [p for p in paths if p.is_file()]
        hint = "run preprocess_embeddings.py for it" if field_name == "caption_embed_dir" else "check it in the catalog"
        if not present:
            problems.append(
                f"{name}: none of the first {len(paths)} files its records name exists under {field_name} "
                f"{getattr(entry, field_name)} (e.g. {paths[0].name}); {hint}"
            )
        elif all(p.stat().st_size == 0 for p in present):
            problems.append(
                f"{name}: the first {len(present)} files under {field_name} {getattr(entry, field_name)} are all "
                f"empty (e.g. {present[0].name}); {hint}"
            )
    return problems


def _entry_problems(name: str, entry: DatasetEntryConfig, media: bool, embeddings: bool) -> list[str]:
    """Missing annotation file, folders the records need that are unset or absent, folders of missing files."""
    annotation = Path(entry.annotation_path)
    if not annotation.is_file():
        return [f"{name}: annotation file {annotation} does not exist; check annotation_path in the catalog"]
    try:
        records = load_records(annotation)
    except ValueError as err:
        return [f"{name}: {err}"]
    problems = []
    for field_name in sorted(needed_folders(records) - (set() if embeddings else {"caption_embed_dir"})):
        folder = getattr(entry, field_name)
        if folder is None:
            problems.append(f"{name}: records need {field_name} but the entry does not set it")
        elif not Path(folder).is_dir():
            hint = " (run preprocess_embeddings.py)" if field_name == "caption_embed_dir" else ""
            problems.append(f"{name}: {field_name} {folder} does not exist{hint}")
    return problems or _sampled_file_problems(name, entry, records, media, embeddings)


def dataset_problems(
    names: Sequence[str], catalog: dict[str, DatasetEntryConfig], media: bool = True, embeddings: bool = True
) -> list[str]:
    """Every problem of a run's datasets, one line each: unknown names (with the closest catalog name), missing or
    unreadable annotation files, folders the records need that are unset or absent, folders whose sampled files are
    all missing or empty.

    Args:
        names: dataset names of a run (`data.datasets`).
        catalog: from `load_catalog`.
        media: also sample the input media files (False with a feature cache: the files are not read).
        embeddings: also check the caption embeddings (False for preprocess_embeddings.py, which writes them).
    """
    if not names:
        return ["data.datasets is empty; name at least one catalog dataset, e.g. data.datasets=[cc3m_enc]"]
    problems = []
    for name in dict.fromkeys(names):
        if name not in catalog:
            suggestion = closest_name(name, catalog)
            hint = f"; did you mean '{suggestion}'?" if suggestion else ""
            problems.append(f"dataset '{name}' is not in the catalog{hint} (known: {', '.join(sorted(catalog))})")
        else:
            problems += _entry_problems(name, catalog[name], media, embeddings)
    return problems


def validate_datasets(
    names: Sequence[str], catalog: dict[str, DatasetEntryConfig], media: bool = True, embeddings: bool = True
) -> None:
    """Check that every named dataset exists in the catalog and that its files and needed folders exist.

    Args:
        names: dataset names of a run (`data.datasets`).
        catalog: from `load_catalog`.
        media: also sample the input media files (False with a feature cache).
        embeddings: also check the caption embeddings and their folder (False before they are written).

    Raises:
        ValueError: one message listing every problem of `dataset_problems`.
    """
    problems = dataset_problems(names, catalog, media, embeddings)
    if problems:
        raise ValueError(f"{len(problems)} dataset problem(s): " + "; ".join(problems))
