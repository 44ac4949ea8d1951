"""Byte sizes written the way people write them in a recipe: `4GiB`, `512MB`, `0`."""

from __future__ import annotations

import re

from mmlora.errors import MmloraError

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")


def parse_bytes(value, field: str) -> int:
    """`value` (an int, or text such as `4GiB`, `1.5GB`, `0`) in bytes; `field` names it in errors."""
    if isinstance(value, bool):
        value = str(value)
    if isinstance(value, int) and value >= 0:
        return value
    match = _SIZE.fullmatch(str(value))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise MmloraError(f"{field}: got {value!r}, expected a size such as 4GiB, 512MiB, 2GB or 0 "
                          "(units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB).")
    return int(float(match.group(1)) * _UNITS[unit])


def format_bytes(n: float) -> str:
    """`n` bytes as people read them: 512 B, 3.4 KiB, 1.2 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
