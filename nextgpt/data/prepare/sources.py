"""Reading official raw downloads: JSON lists, one-line errors naming the fix, and checked media names.

Raw files are checked at the boundary: a missing folder or unreadable JSON stops the run with one line; a bad record
becomes a `Skip` the report counts. Media names go through the training parser's own `resolve_media_path`, so a name
that the datasets would refuse (absolute, `..`) is refused here first.

    records = read_json_list(root / "cc3m.json", "CC3M captions")
    name = checked_media_name(root / "images", record["image_name"], Modality.IMAGE)   # or raises Skip
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from nextgpt.constants import Modality
from nextgpt.data.prepare.report import Skip
from nextgpt.data.records import MalformedRecordError, resolve_media_path
from nextgpt.data.records import read_json_list as read_json_file
from nextgpt.encoders.media import SUPPORTED_EXTENSIONS


def read_json_list(path: Path, what: str) -> list[Any]:
    """Read a raw annotation file holding a JSON list.

    Args:
        path: the file.
        what: what it is, for the error messages ("LLaVA-Instruct-150K conversations").

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: it is not readable JSON or not a list.
    """
    return read_json_file(path, f"{what}:", "download it or pass --annotation", "download it again")


def first_existing(root: Path, names: tuple[str, ...]) -> Path | None:
    """The first of `root/<name>` that exists, or None."""
    return next((root / name for name in names if (root / name).exists()), None)


def require_folder(folder: Path | None, what: str, candidates: tuple[str, ...], root: Path) -> Path:
    """A media folder that must exist.

    Raises:
        FileNotFoundError: naming the folders looked for and the flag that sets it.
    """
    if folder is None or not folder.is_dir():
        looked = str(folder) if folder is not None else " or ".join(str(root / c) for c in candidates)
        raise FileNotFoundError(
            f"{what} folder {looked} does not exist; put the files there (or, for one --dataset, pass --media-dir)"
        )
    return folder


def record_id(record: Any, keys: tuple[str, ...], index: int) -> str:
    """The record's id for the report: the first present key of `keys`, else `#<index>`."""
    if isinstance(record, dict):
        for key in keys:
            value = record.get(key)
            if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
                return str(value)
    return f"#{index}"


def text_field(record: dict[str, Any], key: str, collapse: bool = True) -> str:
    """A non-empty string field, stripped; `collapse` also joins whitespace runs into one space (raw WebVid captions
    end in "\\r\\n"; instructions keep their line breaks).

    Raises:
        Skip: `malformed_record` when absent or not a string, `empty_caption` when empty.
    """
    value = record.get(key)
    if not isinstance(value, str):
        raise Skip("malformed_record", f"field '{key}' must be a string, got {type(value).__name__}")
    text = " ".join(value.split()) if collapse else value.strip()
    if not text:
        raise Skip("empty_caption", f"field '{key}' is empty")
    return text


def checked_media_name(folder: Path, name: Any, modality: Modality) -> str:
    """A record's media name, checked: inside `folder`, a supported extension, an existing non-empty file.

    Args:
        folder: the dataset's media folder.
        name: the name from the raw record.
        modality: which readers must accept it.

    Returns:
        The name with forward slashes, as the output record stores it.

    Raises:
        Skip: malformed_record / unsafe_path / unknown_extension / missing_media / empty_media.
    """
    if not isinstance(name, str) or not name.strip():
        raise Skip("malformed_record", f"the {modality.value} file name must be a non-empty string, got {name!r}")
    try:
        path = resolve_media_path(folder, name, modality)
    except MalformedRecordError as err:
        raise Skip("unsafe_path", str(err)) from None
    check_media_file(path, modality)
    return PurePosixPath(name.replace("\\", "/")).as_posix()


def check_media_file(path: Path, modality: Modality) -> None:
    """A media file the readers can take: supported extension, present, not empty (its content is not decoded).

    Raises:
        Skip: unknown_extension / missing_media / empty_media.
    """
    if path.suffix.lower() not in SUPPORTED_EXTENSIONS[modality]:
        supported = ", ".join(SUPPORTED_EXTENSIONS[modality])
        raise Skip("unknown_extension", f"{path.name} is not a {modality.value} file the readers take ({supported})")
    if not path.is_file():
        raise Skip("missing_media", f"{modality.value} file {path} does not exist")
    if path.stat().st_size == 0:
        raise Skip("empty_media", f"{modality.value} file {path} is empty")


def embedding_name(media_name: str) -> str:
    """Caption-embedding name of a target media file: `<media name>.npy`, as the original builders wrote it.

    A name in a subfolder (`00000/000000123.jpg`) is flattened with `__`, because embedding names are bare file
    names inside the caption_embed_dir.
    """
    return "__".join(PurePosixPath(media_name).parts) + ".npy"
