"""Typed configurations: strict, recursive loading and the command line generated from them.

Every model and pipeline has one ``@dataclass`` config; the resolved config of a run is
saved as JSON (``RUN/config.json``) and rebuilt from it by :func:`from_dict`, which is
*strict*: an unknown key (a typo) is a :class:`~robodream.errors.ConfigError` naming the
key and the closest known one, and nested dataclasses are rebuilt recursively.

The command line of a config-driven verb is generated from the same dataclass
(:func:`config_options`): field ``model.video_stride`` is ``--model.video-stride``, and a
leaf name that is unique in the tree is also accepted alone (``--video-stride``), so a
field is declared once — in its dataclass, with its comment as the help text. Fields a
dataclass lists in ``DERIVED_FIELDS`` are filled in from the data at training time and are
not options.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from robodream.errors import ConfigError


# ----------------------------------------------------------------------------- to / from JSON
def to_dict(obj: Any) -> Any:
    """Dataclasses (nested), tuples and Paths to plain JSON types (dicts, lists, str, numbers)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _strip_optional(tp):
    """``Optional[X]`` -> (X, True); anything else -> (tp, False)."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _convert(value: Any, tp: Any, where: str, legacy: bool = False) -> Any:
    """``value`` (parsed JSON) as type ``tp``; raises ConfigError on a mismatch."""
    tp, optional = _strip_optional(tp)
    if value is None:
        if optional or tp is Any:
            return None
        raise ConfigError(f"config key '{where}' may not be null")
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{where}' must be an object, got {value!r}")
        return from_dict(tp, value, where=where, legacy=legacy)
    origin = typing.get_origin(tp)
    if origin is tuple or tp is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{where}' must be a list, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if args:
            if len(args) != len(value):
                raise ConfigError(f"config key '{where}' needs {len(args)} values, got {len(value)}")
            return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        return tuple(value)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{where}' must be a list, got {value!r}")
        (arg,) = typing.get_args(tp) or (Any,)
        return [_convert(v, arg, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{where}' must be an object, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{where}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"config key '{where}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{where}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{where}' must be a string, got {value!r}")
        return value
    return value


def from_dict(cls, d: Any, *, where: str = "", legacy: bool = False):
    """Build dataclass ``cls`` from a parsed-JSON dict, strictly and recursively.

    Missing keys take the dataclass defaults — or, with ``legacy=True`` (reading a config saved
    by a run), ``cls.LEGACY_DEFAULTS`` where the class has them: the values that fields added
    later had implicitly before they existed (e.g. a default that has since changed); lists become tuples where the field is a tuple; nested
    dataclass fields are rebuilt from nested dicts; ``__post_init__`` checks run.

    Raises:
        ConfigError: an unknown key (named with its dotted path and the closest known key),
            a value of the wrong type, or a value the dataclass rejects.
    """
    if not isinstance(d, dict):
        raise ConfigError(f"config {where or cls.__name__} must be an object, got {type(d).__name__}")
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = [k for k in d if k not in names]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, names, n=1)
        hint = f" (did you mean '{_join(where, close[0])}'?)" if close else f"; known keys: {', '.join(names)}"
        raise ConfigError(f"unknown config key '{_join(where, key)}'{hint}")
    hints = _hints(cls)
    old = {k: v for k, v in getattr(cls, "LEGACY_DEFAULTS", {}).items() if k not in d} if legacy else {}
    kwargs = {k: _convert(v, hints[k], _join(where, k), legacy) for k, v in {**old, **d}.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"bad config {where or cls.__name__}: {e}") from e


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def replace(obj, overrides: dict[str, Any]):
    """A copy of dataclass ``obj`` with nested ``overrides`` ({"train": {"steps": 5}}) applied strictly."""
    return from_dict(type(obj), deep_merge(to_dict(obj), overrides))


def deep_merge(base: dict, over: dict) -> dict:
    """``base`` updated by ``over``, recursing into nested dicts (neither input is modified)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{"train": {"steps": 5}} -> {"train.steps": 5}, through every nested, non-empty dict."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = _join(prefix, k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def load_config_file(path: str | Path) -> dict:
    """Parse a JSON config file (e.g. a run's ``config.json``).

    Raises:
        ConfigError: unreadable file or invalid JSON, or a top level that is not an object.
    """
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read config {path}: {e}") from e
    if not isinstance(d, dict):
        raise ConfigError(f"config {path} must hold a JSON object")
    return d


# ----------------------------------------------------------------------------- command line
@dataclass
class ConfigOption:
    """One command-line option generated from a config field."""

    path: str  # dotted field path, e.g. "model.video_stride"
    flags: tuple[str, ...]  # e.g. ("--model.video-stride", "--video-stride")
    type: Any  # the field's type (Optional stripped)
    default: Any  # the dataclass default (shown in the help)
    help: str


def field_comments(cls) -> dict[str, str]:
    """Help text of each field of dataclass ``cls``: its trailing ``# comment``, else the comment
    block right above it (source comments are the documentation of a config field)."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    out: dict[str, str] = {}
    above: list[str] = []
    pat = re.compile(r"^\s+(\w+)\s*:\s*[^#]*?(?:#\s*(.*))?$")
    for ln in lines:
        s = ln.strip()
        if s.startswith("#"):
            text = s.lstrip("#").strip()
            if text and not set(text) <= set("-= "):
                above.append(text.strip("- "))
            continue
        m = pat.match(ln)
        if m and not s.startswith(("def ", "@", "return", "class ")) and ":" in s.split("=")[0]:
            name, trailing = m.group(1), m.group(2)
            if name not in out:
                out[name] = (trailing or " ".join(above)).strip()
        above = []
    return out


def config_options(cls, *, exclude: tuple[str, ...] = (), default=None) -> list[ConfigOption]:
    """Command-line options for every settable leaf field of dataclass ``cls``, recursively.

    Defaults shown are those of ``default`` (an instance; ``cls()`` if None), nested
    default factories included (e.g. each model's own training defaults).

    Skipped: fields in a class's ``DERIVED_FIELDS`` (filled in from the data), paths in
    ``exclude``. The flag of ``a.b_c`` is ``--a.b-c``; a leaf whose name is unique in the tree
    (and not in ``exclude``) is also ``--b-c``.
    """
    leaves: list[tuple[str, Any, Any, str]] = []

    def walk(c, prefix: str, instance) -> None:
        hints, comments = _hints(c), field_comments(c)
        derived = set(getattr(c, "DERIVED_FIELDS", ()))
        for f in dataclasses.fields(c):
            path = _join(prefix, f.name)
            if not f.init or f.name in derived or path in exclude:
                continue
            tp, _ = _strip_optional(hints[f.name])
            default = getattr(instance, f.name)
            if _is_dataclass_type(tp):
                walk(tp, path, default)
            else:
                leaves.append((path, tp, default, comments.get(f.name, "")))

    walk(cls, "", default if default is not None else cls())
    names = [p.rsplit(".", 1)[-1] for p, *_ in leaves]
    reserved = {e.rsplit(".", 1)[-1] for e in exclude}
    out = []
    for (path, tp, default, help_text), name in zip(leaves, names):
        flags = ("--" + path.replace("_", "-"),)
        if "." in path and names.count(name) == 1 and name not in reserved:
            flags += ("--" + name.replace("_", "-"),)
        out.append(ConfigOption(path, flags, tp, default, help_text))
    return out


def parse_option_value(opt: ConfigOption, raw: Any) -> Any:
    """A command-line value (string, or list of strings for a repeated tuple option) as JSON data.

    Tuples accept repeated flags and comma-separated values (``--window 0,3,3``); dict fields
    take a JSON object; bools are flags.

    Raises:
        ConfigError: a value that does not parse as the field's type.
    """
    tp = opt.type
    flag = opt.flags[-1]
    origin = typing.get_origin(tp)
    if origin in (tuple, list) or tp in (tuple, list):
        args = typing.get_args(tp)
        elem = args[0] if args else str
        items = [x for r in (raw if isinstance(raw, (list, tuple)) else [raw]) for x in str(r).split(",") if x != ""]
        return [_scalar(flag, x, elem) for x in items]
    if origin is dict or tp is dict:
        try:
            v = json.loads(raw)
        except ValueError as e:
            raise ConfigError(f"{flag} must be a JSON object: {e}") from e
        if not isinstance(v, dict):
            raise ConfigError(f"{flag} must be a JSON object, got {raw!r}")
        return v
    if tp is bool:
        return bool(raw)
    return _scalar(flag, raw, tp)


def _scalar(flag: str, raw: Any, tp: Any) -> Any:
    if tp in (int, float):
        try:
            return tp(raw)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{flag} must be {'an integer' if tp is int else 'a number'}, got {raw!r}") from e
    return str(raw)


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """{"train.steps": 5} -> {"train": {"steps": 5}}."""
    out: dict[str, Any] = {}
    for key, v in flat.items():
        parts = key.split(".")
        d = out
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        d[parts[-1]] = v
    return out
