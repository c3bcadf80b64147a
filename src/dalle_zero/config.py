"""Frozen, validated dataclass configs and their JSON form.

Every config in the project (model configs such as ``DVAEConfig`` and training configs such as
``DVAETrainConfig``) is a ``@dataclass(frozen=True, kw_only=True)`` that derives from
:class:`Config`. Fields are JSON-native (int, float, str, bool, None, tuples/lists of those, or
nested ``Config``s), so a config round-trips through ``config.json`` exactly. Bad values raise a
``ValueError`` that names the field, the value and what was expected.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

C = TypeVar("C", bound="Config")

PRESET_DIR = Path(__file__).resolve().parent / "configs"

logger = logging.getLogger(__name__)

# Presets are named ``<stage>_<name>.json`` in lower case with underscores (docs/layout.md, "Names").
# Old names users may have in scripts still load, with a one-line warning.
RENAMED_PRESETS = {
    "paper-12b": "prior_paper_12b",  # the model section of prior_paper_12b.json is the same config
    "transformer_tiny": "prior_model_tiny",
    "transformer_emoji": "prior_model_emoji",
}


def current_preset_name(name: str) -> str:
    """``name`` as presets are called now (``.json`` kept if given); an old name logs a deprecation."""
    stem = name.removesuffix(".json")
    new = RENAMED_PRESETS.get(stem)
    if new is None:
        return name
    logger.warning("preset %r is deprecated, use %r (the old name will be removed)", stem, new)
    return name.replace(stem, new)


class Config:
    """Mixin for frozen dataclass configs: JSON round trip and strict construction from dicts."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out[f.name] = _jsonable(value)
        return out

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], *, source: str = "config") -> C:
        """Build from a dict, rejecting unknown keys; lists become tuples where the field is a tuple."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(
                f"{source}: unknown field(s) {unknown} for {cls.__name__}; known fields: {sorted(fields)}"
            )
        hints = typing.get_type_hints(cls)
        kwargs = {name: _coerce(hints[name], value, source=source, field=name) for name, value in data.items()}
        try:
            return cls(**kwargs)
        except TypeError as e:  # missing required fields
            raise ValueError(f"{source}: {e}") from None
        except ValueError as e:  # a field's check in __post_init__: say which file it came from
            raise ValueError(_with_source(source, str(e))) from None

    def to_json(self) -> str:
        return json.dumps({"config_class": type(self).__name__, **self.to_dict()}, indent=2) + "\n"

    @classmethod
    def from_json_file(cls: type[C], path: str | Path) -> C:
        data = read_json_file(path, missing=f"config file not found: {path}")
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k not in ("config_class", "model_type", "format_version")}
        return cls.from_dict(data, source=str(path))

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


# The nested configs of every train config (``DVAETrainConfig.model``, ``PriorTrainConfig.loop``, ...):
# callers merge command-line options into them as dicts, so they must be objects before that.
TRAIN_SECTIONS = ("model", "loop")


def load_config_source(
    name_or_path: str | Path, *, prefix: str = "", sections: tuple[str, ...] = TRAIN_SECTIONS
) -> tuple[dict[str, Any], Path]:
    """The fields of a JSON config file, or of a preset in ``dalle_zero/configs`` named with or
    without ``prefix`` (``"emoji"`` or ``"prior_emoji"`` for ``prior_emoji.json``), and its path.

    A file that is not a JSON object, or whose ``sections`` (nested configs) are neither objects nor
    null, is a ValueError naming the file and the field."""
    path = Path(name_or_path)
    if not path.is_file():
        name = current_preset_name(str(name_or_path))
        candidates = [PRESET_DIR / f"{name}.json", PRESET_DIR / f"{prefix}{name}.json"]
        found = [p for p in candidates if p.is_file()] if "/" not in name else []
        if not found:
            known = sorted(p.stem for p in PRESET_DIR.glob(f"{prefix}*.json"))
            raise FileNotFoundError(f"config {name!r} is neither a file nor a preset (presets: {known})")
        path = found[0]
    data = read_json_file(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {json_type(data)}")
    for name in sections:
        if data.get(name) is not None and not isinstance(data[name], dict):
            raise ValueError(f"{path}: field {name!r} must be a JSON object, got {json_type(data[name])}")
    return {k: v for k, v in data.items() if k not in ("config_class", "model_type", "format_version")}, path


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages ("a list", "a number", ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})" if len(repr(value)) <= 20 else "a number"
    if isinstance(value, str):
        return f"a string ({value[:40]!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _with_source(source: str, message: str) -> str:
    """``message`` prefixed with ``source`` unless it names it already."""
    return message if message.startswith(source) else f"{source}: {message}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


def _coerce(hint: Any, value: Any, *, source: str = "config", field: str = "") -> Any:
    """Turn JSON values into the field's type where JSON cannot express it (tuples, nested configs).

    A nested config given anything but a JSON object is a ValueError naming ``source`` and ``field``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, source=source, field=field) if len(args) == 1 else value
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(hint)
        inner = args[0] if args else Any
        return tuple(_coerce(inner, v, source=source, field=field) for v in value)
    if isinstance(hint, type) and issubclass(hint, Config):
        if not isinstance(value, (dict, Config)):
            raise ValueError(
                f"{source}: field {field!r} must be a JSON object ({hint.__name__}), got {json_type(value)}"
            )
        return hint.from_dict(value, source=f"{source}: {field}") if isinstance(value, dict) else value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def read_json_file(path: str | Path, *, missing: str | None = None, error: type[Exception] = ValueError) -> Any:
    """The parsed JSON of ``path``. With ``missing``, an absent file raises ``FileNotFoundError(missing)``;
    a file that is not JSON (including text that is not UTF-8, nesting too deep for the parser and
    integers too long to convert) raises ``error`` naming the file, the line and the problem."""
    path = Path(path)
    if missing is not None and not path.is_file():
        raise FileNotFoundError(missing)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path}: not valid JSON (not UTF-8 text: byte {e.start})") from None
    return parse_json(text, source=str(path), error=error)


def parse_json(text: str, *, source: str, error: type[Exception] = ValueError) -> Any:
    """``json.loads(text)``; anything the parser refuses raises ``error`` naming ``source``, never a traceback."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{source}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:  # e.g. 100,000 nested brackets: the parser recurses once per level
        raise error(f"{source}: not valid JSON (nested too deeply)") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise error(f"{source}: not valid JSON ({str(e).splitlines()[0] if str(e) else 'unreadable value'})") from None


def check_format_version(data: dict[str, Any], supported: int, *, source: str) -> int:
    """``data["format_version"]`` (default ``supported``), or ValueError naming ``source``: not an integer,
    or newer than ``supported``."""
    version = data.get("format_version", supported)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(f"{source}: field 'format_version' must be a non-negative integer, got {json_type(version)}")
    if version > supported:
        raise ValueError(f"{source}: format_version {version} is newer than this dalle-zero supports ({supported})")
    return version


# ---- validation helpers: each raises ValueError naming the config, field and expectation ----


def check_int(cfg: object, name: str, *, min_value: int | None = None, max_value: int | None = None) -> None:
    value = getattr(cfg, name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{type(cfg).__name__}.{name} must be an integer, got {value!r}")
    if min_value is not None and value < min_value:
        raise ValueError(f"{type(cfg).__name__}.{name} must be >= {min_value}, got {value}")
    if max_value is not None and value > max_value:
        raise ValueError(f"{type(cfg).__name__}.{name} must be <= {max_value}, got {value}")


def check_float(
    cfg: object,
    name: str,
    *,
    min_value: float | None = None,
    max_value: float | None = None,
    strict_min: bool = False,
) -> None:
    value = getattr(cfg, name)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
        raise ValueError(f"{type(cfg).__name__}.{name} must be a number, got {value!r}")
    if min_value is not None and (value <= min_value if strict_min else value < min_value):
        op = ">" if strict_min else ">="
        raise ValueError(f"{type(cfg).__name__}.{name} must be {op} {min_value}, got {value}")
    if max_value is not None and value > max_value:
        raise ValueError(f"{type(cfg).__name__}.{name} must be <= {max_value}, got {value}")


def check_choice(cfg: object, name: str, choices: typing.Iterable[Any]) -> None:
    value = getattr(cfg, name)
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{type(cfg).__name__}.{name} must be one of {list(choices)}, got {value!r}")


def check_bool(cfg: object, name: str) -> None:
    value = getattr(cfg, name)
    if not isinstance(value, bool):
        raise ValueError(f"{type(cfg).__name__}.{name} must be true or false, got {value!r}")
