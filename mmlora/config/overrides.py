"""Dotted `section.key=value` overrides: recognising them and checking them against the schema.

A wrong key is answered (mmlora/config/keys.py) with the full dotted key it most likely means,
searched across sections (`lora.epochs` -> `train.epochs`), and the usual Hugging Face / PEFT spellings
(`lr`, `num_train_epochs`, `per_device_train_batch_size`, `lora_alpha`, ...) are answered with
mmlora's name for the same setting.

Those foreign names are *suggested, not accepted as aliases*, on purpose: every recipe field
has exactly one spelling, so the recipe.yaml saved with a run, the resume compatibility check
and `mmlora recipes fields` all speak of the same key; and several HF names do not mean the
same thing as the nearest mmlora field (`warmup_steps` counts steps where `train.warmup_ratio`
is a share of them), so silently mapping them would train something the user did not ask for.
The error shows the corrected override, ready to paste.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any

import yaml

from mmlora.config.keys import unknown_key_hint
from mmlora.config.schema import Recipe
from mmlora.config.values import build_section, coerce_field
from mmlora.errors import MmloraError

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*")


def looks_like_override(token: str) -> bool:
    """True for `key=value` with a dotted identifier before the `=` (not a path like `a/b=c`)."""
    key, sep, _ = token.partition("=")
    return bool(sep) and _KEY.fullmatch(key.strip()) is not None


def parse_value(assignment: str, raw: str) -> Any:
    """An override's value as YAML (`3` -> 3, `[a, b]` -> a list); empty text is ''."""
    if not raw.strip():
        return ""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as err:
        problem = str(getattr(err, "problem", None) or err).splitlines()[0]
        raise MmloraError(f"override '{assignment}': the value is not valid YAML ({problem}); "
                          "quote it, e.g. key='[text'.") from None


def check_override(assignment: str) -> None:
    """Check one `section.key=value` against the recipe's fields and types.

    The error names the override as typed (not the recipe file it was applied to), with the
    key it most likely meant.
    """
    if "=" not in assignment:
        raise MmloraError(f"Override '{assignment}' is not of the form key=value (e.g. train.epochs=3).")
    dotted, raw = (part.strip() for part in assignment.split("=", 1))
    value = parse_value(assignment, raw)
    keys = dotted.split(".")
    cls: Any = Recipe
    for depth, key in enumerate(keys):
        path = ".".join(keys[: depth + 1])
        hints = typing.get_type_hints(cls)
        if key not in hints:
            raise MmloraError(f"override '{assignment}': unknown key '{dotted}'.{unknown_key_hint(dotted, raw)}")
        tp = hints[key]
        last = depth == len(keys) - 1
        if dataclasses.is_dataclass(tp):
            if last:
                try:
                    build_section(tp, value or {}, path)
                except MmloraError as err:
                    raise MmloraError(f"override '{assignment}': {err}") from None
                return
            cls = tp
            continue
        if not last:
            raise MmloraError(f"override '{assignment}': '{path}' is a value, not a section.")
        try:
            coerce_field(value, tp, path)
        except MmloraError as err:
            raise MmloraError(f"override '{assignment}': {err}") from None


def overrides_named_in(message: str, overrides: list[str]) -> list[str]:
    """The overrides whose key a validation message mentions (to name them in the error)."""
    named = []
    for assignment in overrides:
        key = assignment.split("=", 1)[0].strip()
        if key and re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", message):
            named.append(assignment)
    return named
