"""Recipe values from untyped YAML: each checked against its field's type, errors naming the field.

Shared by recipe loading (mmlora/config/loading.py) and override checks
(mmlora/config/overrides.py), so a value is judged the same way in a file and on the command line.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any, Literal

from mmlora.config.keys import unknown_key_hint  # full dotted keys, across sections
from mmlora.errors import MmloraError


_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a mapping",
          type(None): "null"}
_PLURALS = {int: "integers", float: "numbers", str: "strings", bool: "true or false values", dict: "mappings"}
_DATA_SOURCE = {str, dict}
"""data.train / data.eval: one source is a string (a file, folder or hf: hub id) or a mapping
{path, ...}; said as what they are rather than as their Python types."""


def _options(tp: Any) -> list:
    return list(typing.get_args(tp)) if typing.get_origin(tp) in (typing.Union, types.UnionType) else [tp]


def _join(words: list[str]) -> str:
    """`a`, `a or b`, `a, b, or c` (the last comma keeps "a path or hub id, a mapping, or ..." readable)."""
    return words[0] if len(words) == 1 else " or ".join(words) if len(words) == 2 else \
        ", ".join(words[:-1]) + ", or " + words[-1]


def _plural(tp: Any) -> str:
    return " or ".join(_PLURALS.get(option, str(option)) for option in _options(tp))


def _describe(tp: Any) -> str:
    """A type annotation in words, for error messages: "one of 'caption', 'vqa'", "a string or a
    list of strings"; a union of single values and a list of the same values says "a list of these"."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(tp))
    if origin is list:
        return f"a list of {_plural(typing.get_args(tp)[0])}"
    if origin not in (typing.Union, types.UnionType):
        return _WORDS.get(tp, str(tp))
    options = [o for o in typing.get_args(tp) if o is not type(None)]
    singles = [o for o in options if typing.get_origin(o) is not list]
    lists = [o for o in options if typing.get_origin(o) is list]
    words = ["a path or hub id", "a mapping"] if set(singles) == _DATA_SOURCE else [_describe(o) for o in singles]
    for option in lists:
        same = len(singles) > 1 and set(_options(typing.get_args(option)[0])) == set(singles)
        words.append("a list of these" if same else _describe(option))
    return _join(words + (["null"] if len(options) < len(typing.get_args(tp)) else []))


_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def coerce_field(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`; return it (ints widen to floats)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        # YAML reads `true` as a bool; fields like train.bf16 spell their choices as strings.
        candidate = str(value).lower() if isinstance(value, bool) else value
        if value is False and "off" in allowed and "false" not in allowed:
            candidate = "off"  # YAML 1.1 reads a bare `off` as false (train.vision_cache: off)
        if candidate in allowed:
            return candidate
    elif origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return coerce_field(value, option, where)
            except MmloraError:
                continue
    elif origin is list:
        item_type = typing.get_args(tp)[0]
        if isinstance(value, str) and item_type is str:
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            return [coerce_field(item, item_type, f"{where}[{i}]") for i, item in enumerate(value)]
    elif tp is dict:  # a data source mapping (mmlora/config/sources.py checks its keys)
        if isinstance(value, dict):
            return value
    elif tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # PyYAML follows YAML 1.1, which reads `2e-4` (no dot) as a string: accept what Python
        # reads as a finite number, so `learning_rate: 2e-4` means what the user wrote.
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise MmloraError(f"{where}: got {value!r}, expected {_describe(tp)}.")


def build_section(cls: type, data: Any, where: str) -> Any:
    """A recipe section (dataclass `cls`) from a mapping: every value checked against its field,
    an unknown key named with the key it most likely means. `where` is the dotted path so far."""
    if not isinstance(data, dict):
        raise MmloraError(f"{where or 'recipe'}: expected a mapping of keys, got {data!r}.")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise MmloraError(f"Unknown recipe key '{path}'.{unknown_key_hint(path)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = build_section(tp, value or {}, path)
        else:
            kwargs[key] = coerce_field(value, tp, path)
    return cls(**kwargs)
