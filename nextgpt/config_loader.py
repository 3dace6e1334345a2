"""Strict YAML → dataclass loading: merge files and `key=value` overrides, then type-check every field.

Owns the mechanics only; the dataclasses themselves live in `nextgpt.config`.

    cfg = load_config("configs/stage_2.yaml", overrides=["train.lr=1e-4"])
    save_config(cfg, run_dir / "config.yaml")
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

logger = logging.getLogger(__name__)

T = TypeVar("T")

INHERIT_KEY = "inherit"
"""A YAML file may name the file it overlays (path relative to itself): `inherit: base.yaml`."""

_PACKAGE_DIR = Path(__file__).resolve().parent
SHIPPED_CONFIG_DIR = (
    _PACKAGE_DIR / "configs" if (_PACKAGE_DIR / "configs").is_dir() else _PACKAGE_DIR.parent / "configs"
)
"""The configs that ship with the code: `nextgpt/configs/` in an installed wheel, `configs/` in a clone."""


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the key and the fix."""


def _closest(name: str, candidates: list[str]) -> str:
    match = difflib.get_close_matches(name, candidates, n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check `value` against the type `hint` and convert YAML scalars/lists where lossless."""
    origin = get_origin(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _coerce(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{key}: got {value!r}")
    if origin is Literal:
        if value not in get_args(hint):
            choices = ", ".join(repr(a) for a in get_args(hint))
            raise ConfigError(f"{key} must be one of {choices}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        args = get_args(hint)
        item_hint = args[0] if args else Any
        items = [_coerce(v, item_hint, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        _, value_hint = get_args(hint) or (str, Any)
        return {str(k): _coerce(v, value_hint, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping of {hint.__name__} fields, got {value!r}")
        return from_dict(hint, value, prefix=key)
    if hint is Path:
        if isinstance(value, Path):
            return value
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a path string, got {value!r}")
        return Path(value)
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported field type {hint!r}")


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from a nested dict, rejecting unknown keys and wrong types.

    Args:
        cls: the dataclass type.
        data: nested mapping (from YAML).
        prefix: dotted key of `data` within the root, for error messages.

    Returns:
        An instance of `cls`; fields absent from `data` keep their defaults.

    Raises:
        ConfigError: naming the offending key (and the closest valid key for unknown ones). Keys in the dataclass's
            `RETIRED_KEYS` are skipped, with a warning unless they hold their old default.
    """
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = list(fields)
    retired: dict[str, tuple[object, str]] = getattr(cls, "RETIRED_KEYS", {})  # removed key -> (old default, note)
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key in retired:
            # Config files saved by earlier versions (every checkpoint's config.yaml) keep loading: the old default is
            # dropped quietly, any other value with a warning saying what happens now. The key has no effect.
            old_default, note = retired[key]
            if not (value == old_default and type(value) is type(old_default)):
                logger.warning("config key '%s' is no longer used and is ignored: %s", dotted, note)
            continue
        if key not in names:
            raise ConfigError(f"unknown config key '{dotted}'{_closest(str(key), names)}")
        default = _field_default(fields[key])
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            # A partial section overlays the field's own default (e.g. the video decoder's 320x576), not the bare
            # class defaults of its type.
            value = merge_dicts(to_dict(default), value)
        kwargs[key] = _coerce(value, hints[key], dotted)
    try:
        return cls(**kwargs)
    except TypeError as err:  # pragma: no cover - fields are checked above
        raise ConfigError(f"{prefix or cls.__name__}: {err}") from err


def _field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def to_dict(obj: Any) -> Any:
    """Turn a config dataclass into plain YAML-safe Python values (Paths → str, tuples → lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def merge_dicts(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Recursively overlay `overlay` onto `base` (mappings merge, everything else replaces)."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_dicts(merged[key], value)
        else:
            merged[key] = value
    return merged


def find_config_file(path: str | Path, what: str = "config file") -> Path:
    """Resolve a config-side file: an existing path as given, else the shipped file of that name.

    `configs/stage_1.yaml`, `stage_1.yaml` and `stage_1` all name the shipped stage-1 YAML when no such file exists
    relative to the current folder, so the same command works in a clone and after `pip install` from any folder.

    Raises:
        ConfigError: neither the path nor a shipped file of that name exists.
    """
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_absolute():
        relative = Path(*path.parts[1:]) if path.parts[:1] == ("configs",) else path
        for candidate in (relative, relative.with_name(relative.name + ".yaml")):
            shipped = SHIPPED_CONFIG_DIR / candidate
            if candidate.parts and shipped.is_file():
                return shipped
    raise ConfigError(f"{what} not found: {path}; pass an existing file or a shipped name ({SHIPPED_CONFIG_DIR})")


def read_yaml_chain(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML file and, recursively, the files it `inherit`s (the file itself wins).

    Raises:
        ConfigError: a missing file, unreadable YAML, a non-mapping top level or an `inherit` loop (all named).
    """
    path = find_config_file(path) if not _seen else Path(path)
    if not path.is_file():
        raise ConfigError(f"{_seen[-1]}: inherit names {path}, which does not exist; fix its '{INHERIT_KEY}:' line")
    resolved = path.resolve()
    if resolved in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, resolved))
        raise ConfigError(f"inherit loop: {chain}; remove one of the '{INHERIT_KEY}:' lines")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}:{where} is not valid YAML ({problem}); fix the file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read config {path}: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    parent = data.pop(INHERIT_KEY, None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: '{INHERIT_KEY}' must name one YAML file, got {parent!r}")
    return merge_dicts(read_yaml_chain(path.parent / parent, (*_seen, resolved)), data)


def parse_override(text: str) -> dict[str, Any]:
    """Turn `a.b.c=value` into `{"a": {"b": {"c": value}}}`, parsing the value as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value")
    dotted, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"override '{text}': the value is not valid YAML; quote it or fix the brackets") from None
    nested: dict[str, Any] = {}
    cursor = nested
    keys = dotted.strip().split(".")
    for key in keys[:-1]:
        cursor = cursor.setdefault(key, {})
    cursor[keys[-1]] = value
    return nested


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = (), root: type | None = None) -> Any:
    """Load the root config: dataclass defaults ← YAML chain ← `key=value` overrides.

    Args:
        path: YAML file (may `inherit` another); None uses defaults only.
        overrides: strings like `model.llm.max_length=256`.
        root: the root dataclass (default `nextgpt.config.Config`).

    Returns:
        A validated root config instance.

    Raises:
        ConfigError: unknown key, wrong type, missing file or a failed cross-field check.
    """
    if root is None:
        from nextgpt.config import Config

        root = Config
    data = read_yaml_chain(Path(path)) if path is not None else {}
    for text in overrides:
        data = merge_dicts(data, parse_override(text))
    return from_dict(root, data)


def save_config(cfg: Any, path: Path) -> None:
    """Write the resolved config as YAML (loadable again by `load_config`)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
