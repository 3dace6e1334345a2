"""Writing a conversion's results atomically: annotation files, the catalog fragment and the saved report.

Readers see a previous file or the new one, never a half-written one. The catalog fragment (`<out>/datasets.yaml`,
the schema of configs/datasets.yaml) and `<out>/report.json` are merged by name, so converting datasets one at a time,
or twice, leaves one entry per name.

    write_json(out / "cc3m" / "cc3m_comprehension.json", records)
    update_catalog(out / "datasets.yaml", {"cc3m_enc": {...}})
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

CATALOG_FILE = "datasets.yaml"
REPORT_FILE = "report.json"
_CATALOG_HEADER = (
    "# Written by prepare_data.py: catalog entries of the converted datasets (schema of configs/datasets.yaml).\n"
    "# Relative paths resolve against this file's folder. Use it as data.catalog_path, or copy entries.\n"
)


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` through a temporary file in the same folder and an atomic rename.

    Raises:
        OSError: the write failed (a previous file is left as it was).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data: Any) -> None:
    """Write JSON (indented, non-ASCII kept) atomically; the same data always gives the same bytes."""
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _read_mapping(path: Path, key: str) -> dict[str, Any]:
    """`data[key]` of an earlier YAML/JSON output, or {} when there is none.

    Raises:
        ValueError: the file exists but is not an earlier output (so it is not overwritten blindly).
    """
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is YAML
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not readable ({err}); remove it or choose another --out") from err
    if not isinstance(data, dict) or not isinstance(data.get(key), dict):
        raise ValueError(
            f"{path} is not a prepare_data.py output (no '{key}' mapping); remove it or choose another --out"
        )
    return data[key]


def check_output_folder(out: Path) -> None:
    """Refuse an output folder whose catalog or report is not an earlier prepare_data.py output, before writing.

    Raises:
        ValueError: naming the file.
    """
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; pass a folder")
    _read_mapping(out / CATALOG_FILE, "datasets")
    _read_mapping(out / REPORT_FILE, "datasets")


def update_catalog(path: Path, entries: dict[str, dict[str, Any]], remove: tuple[str, ...] = ()) -> None:
    """Add or replace catalog entries by name in the fragment at `path`, keeping the others, sorted by name.

    Args:
        path: the fragment.
        entries: name -> DatasetEntryConfig fields.
        remove: names to drop (an output that has no record left this time).
    """
    merged = {k: v for k, v in {**_read_mapping(path, "datasets"), **entries}.items() if k not in remove}
    body = yaml.safe_dump({"datasets": dict(sorted(merged.items()))}, sort_keys=False, allow_unicode=True)
    write_text_atomic(path, _CATALOG_HEADER + body)


def update_report(path: Path, reports: dict[str, dict[str, Any]]) -> None:
    """Add or replace per-dataset reports by name in `report.json`."""
    merged = {**_read_mapping(path, "datasets"), **reports}
    write_json(path, {"datasets": dict(sorted(merged.items()))})
