"""Text values inside rows: numbers as text, invisible-only text, broken Unicode, readable values.

- Numbers are text: `"answer": 2` trains the answer "2" (counting questions, years). Booleans
  are refused: `true` could mean "yes", "true" or "True", and mmlora does not guess.
- Text made only of whitespace and invisible characters (zero-width spaces and joiners, the
  BOM, direction marks, combining marks without a base, Hangul and Braille blanks) is empty:
  trained as an answer it teaches the model to output nothing visible.
- A lone surrogate (a JSON `\\ud800` escape without its pair) is not Unicode text: tokenizers
  refuse it with a TypeError, so the row is refused here, naming the field.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata

from mmlora.data.samples import RowError

SURROGATE = re.compile("[\ud800-\udfff]")
INVISIBLE_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp", "Mn", "Me"}
"""Control and format characters, separators and lone combining marks: nothing a reader sees."""
INVISIBLE_LETTERS = {"\u115f", "\u1160", "\u3164", "\uffa0", "\u2800", "\u180e"}
"""Hangul fillers, the Braille blank and the Mongolian vowel separator: letters that draw nothing."""


def is_blank(text: str) -> bool:
    """True when `text` has no visible character (empty, whitespace, zero-width characters...)."""
    return all(ch in INVISIBLE_LETTERS or unicodedata.category(ch) in INVISIBLE_CATEGORIES for ch in text)


def as_text(value, field: str):
    """A text field's value as a string: strings as they are, finite numbers written out;
    anything else is returned unchanged for the caller's own type check. RowError for booleans
    and NaN/infinity."""
    if isinstance(value, bool):
        raise RowError("bad_row", f"field '{field}' is {str(value).lower()} (a boolean); write the text "
                                  "to train, e.g. \"yes\" or \"no\"")
    if isinstance(value, float) and not math.isfinite(value):
        raise RowError("missing_answer" if field in ("answer", "answers", "caption", "captions") else "bad_row",
                       f"field '{field}' is {value} (not a number, usually an empty spreadsheet cell)")
    if isinstance(value, int) or isinstance(value, float):
        return str(value)
    return value


def lone_surrogate(row) -> tuple[str, int, str] | None:
    """(field path, character index, the character) of the first lone surrogate in any string of
    a row (nested lists and objects included), or None. Iterative: rows can be deeply nested."""
    if not _holds_surrogate(row):  # the common case, found without naming every field on the way
        return None
    stack = [("", row)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            found = SURROGATE.search(value)  # C speed: cells can be megabytes (data: URI images)
            if found:
                return path or "(the row)", found.start(), found.group()
        elif isinstance(value, dict):
            stack += [(f"{path}.{key}" if path else str(key), item) for key, item in reversed(value.items())]
        elif isinstance(value, (list, tuple)):
            stack += [(f"{path}[{i}]", item) for i, item in reversed(list(enumerate(value)))]
    return None


def _holds_surrogate(value) -> bool:
    """Whether any string in `value` (nested lists and objects included) holds a surrogate; an
    ASCII string is skipped unread (Python records that it is ASCII)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not item.isascii() and SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack += item.values()
        elif isinstance(item, (list, tuple)):
            stack += item
    return False


def check_unicode(row) -> None:
    """RowError (not_utf8) naming the field when a row holds a lone surrogate."""
    found = lone_surrogate(row)
    if found:
        path, index, ch = found
        raise RowError("not_utf8", f"field '{path}' holds a lone surrogate \\u{ord(ch):04x} at character {index + 1}: "
                                   "not valid Unicode text (a broken JSON \\u escape or a mis-decoded export)")


def readable(value, limit: int = 60) -> str:
    """A value as the user wrote it (JSON, not Python repr), cut to `limit` characters."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=lambda v: f"<{type(v).__name__}>")
    except (ValueError, RecursionError):
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def field_list(names, limit: int = 8) -> str:
    """`a, b, c` (and how many more) for a list of field or column names."""
    names = [str(name) for name in names]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more if names else "none"
