"""Checksummed checkpoint folders: every save writes `manifest.json` (size + SHA-256 of each file), and resume, merge
and inference verify it before trusting a byte.

    write_manifest(ckpt_dir)                         # after every file of the folder is written
    verify_manifest(ckpt_dir, exclude=("deepspeed",))  # raises CorruptCheckpointError naming the bad files

A folder without a manifest (written before manifests existed, or by other tools) is read with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
_CHUNK = 8 << 20
_PROGRESS_BYTES = 1 << 30
"""Show a progress bar when a folder holds more than this many bytes (a merged 7B LLM is ~13 GB)."""


class CorruptCheckpointError(ValueError):
    """A checkpoint file differs from its manifest (truncated, flipped bytes, missing) or the manifest is unreadable."""


def _sha256(path: Path, progress: tqdm | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)  # releases the GIL: files hash in parallel threads
            if progress is not None:
                progress.update(len(chunk))
    return digest.hexdigest()


def _hash_files(folder: Path, names: list[str], desc: str) -> dict[str, str]:
    total = sum((folder / n).stat().st_size for n in names)
    with tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=total < _PROGRESS_BYTES, leave=False) as bar:
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            digests = pool.map(lambda n: _sha256(folder / n, bar), names)
            return dict(zip(names, digests, strict=True))


def _listed_files(folder: Path) -> list[str]:
    return sorted(
        p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE
    )


def write_manifest(folder: Path) -> Path:
    """Record size and SHA-256 of every file under `folder` in `folder/manifest.json`.

    Returns:
        The manifest's path.
    """
    folder = Path(folder)
    names = _listed_files(folder)
    digests = _hash_files(folder, names, f"checksums {folder.name}")
    files = {n: {"size": (folder / n).stat().st_size, "sha256": digests[n]} for n in names}
    path = folder / MANIFEST_FILE
    tmp = path.with_name(f".{MANIFEST_FILE}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"format": FORMAT_VERSION, "algorithm": "sha256", "files": files}, indent=1))
    os.replace(tmp, path)
    return path


def read_manifest(folder: Path) -> dict[str, dict] | None:
    """The manifest's `files` table, or None when the folder has none.

    Raises:
        CorruptCheckpointError: the manifest exists but is not a manifest.
    """
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        files = data["files"]
        if data.get("algorithm") != "sha256" or not isinstance(files, dict):
            raise ValueError("unknown layout")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise CorruptCheckpointError(f"{path} is unreadable ({err}); the checkpoint cannot be verified") from None
    return files


def verify_manifest(folder: Path, exclude: Iterable[str] = (), required: bool = False) -> bool:
    """Check every file the manifest lists (except under `exclude` sub-folders) against its size and SHA-256.

    Args:
        folder: a checkpoint or merged folder.
        exclude: top-level sub-folders not to check (e.g. "deepspeed" when only the weights are read).
        required: raise instead of warning when the folder has no manifest.

    Returns:
        True when verified, False when the folder has no manifest (a warning is logged).

    Raises:
        CorruptCheckpointError: one line naming each file that is missing, of another size or another checksum.
    """
    folder = Path(folder)
    files = read_manifest(folder)
    if files is None:
        if required:
            raise CorruptCheckpointError(f"{folder} has no {MANIFEST_FILE}; it was not written by a complete save")
        logger.warning("%s has no %s: its files cannot be verified", folder, MANIFEST_FILE)
        return False
    skipped = tuple(f"{e.rstrip('/')}/" for e in exclude)
    names = [n for n in files if not n.startswith(skipped)]
    bad = [f"{n} (missing)" for n in names if not (folder / n).is_file()]
    present = [n for n in names if (folder / n).is_file()]
    wrong_size = [n for n in present if (folder / n).stat().st_size != files[n]["size"]]
    bad += [f"{n} (size {(folder / n).stat().st_size}, expected {files[n]['size']})" for n in wrong_size]
    to_hash = [n for n in present if n not in wrong_size]
    digests = _hash_files(folder, to_hash, f"verifying {folder.name}")
    bad += [f"{n} (checksum differs)" for n in to_hash if digests[n] != files[n]["sha256"]]
    if bad:
        raise CorruptCheckpointError(
            f"checkpoint {folder} is corrupt: {', '.join(bad)}; restore it from a copy or use another checkpoint"
        )
    return True
