"""data.train / data.eval as a list of data sources: files, folders, hub datasets, mixtures.

A recipe names its data as one path (`data/train.jsonl`), one hub dataset
(`hf:ORG/NAME[:CONFIG][@SPLIT]`), a mapping (`{path, name, split, weight, min_pixels, max_pixels,
format, column_map}`) or a list of any of these (a mixture). Everything downstream reads the
`DataSource` list `data_sources` makes of it; the recipe keeps the value as written, so a saved
recipe reads back the same. See docs/data.md ("Hub datasets", "Mixtures").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from mmlora.errors import MmloraError

HUB_SCHEME = "hf:"
FORMATS = ("auto", "messages", "sharegpt", "caption", "vqa")
SOURCE_KEYS = ("path", "name", "split", "weight", "min_pixels", "max_pixels", "format", "column_map")


@dataclass(frozen=True)
class DataSource:
    """One entry of data.train / data.eval."""

    path: str
    """A file or folder path, `asset://...`, or (hub) the dataset id or folder for load_dataset."""
    label: str
    """How errors and reports name it: `data.train`, or `data.train[2]` in a mixture."""
    hub: bool = False
    """Loaded through `datasets.load_dataset` (an `hf:` id, or a mapping with name/split)."""
    name: str | None = None
    """load_dataset's config name (`hf:ORG/NAME:CONFIG`)."""
    split: str = "train"
    weight: float = 1.0
    """Relative sampling probability in a mixture (mmlora/data/mixture.py)."""
    min_pixels: int | None = None
    max_pixels: int | None = None
    format: str | None = None
    """Overrides data.format for this source."""
    column_map: tuple[str, ...] | None = field(default=None)
    """Overrides data.column_map for this source."""

    @property
    def display(self) -> str:
        """The source as a recipe spells it: the path, or `hf:ORG/NAME[:CONFIG]@SPLIT`."""
        if not self.hub:
            return self.path
        return f"{HUB_SCHEME}{self.path}{':' + self.name if self.name else ''}@{self.split}"

    def bounds(self) -> tuple[int | None, int | None] | None:
        """(min_pixels, max_pixels) when this source sets either (the other None: the model's);
        None when it sets neither."""
        if self.min_pixels is None and self.max_pixels is None:
            return None
        return self.min_pixels, self.max_pixels

    def data_config(self, cfg):
        """data.* with this source's own format and column_map in place of the recipe's."""
        changes = {}
        if self.format is not None:
            changes["format"] = self.format
        if self.column_map is not None:
            changes["column_map"] = list(self.column_map)
        return replace(cfg, **changes) if changes else cfg


def resolve_bounds(bounds: tuple[int | None, int | None], model_bounds: tuple[int, int]) -> tuple[int, int]:
    """A source's (min_pixels, max_pixels), a None side taken from the model's bounds; where a
    side the source sets passes the model's other side, the side the source set wins."""
    low, high = bounds[0] or model_bounds[0], bounds[1] or model_bounds[1]
    if low > high:
        low, high = (low, low) if bounds[1] is None else (high, high)
    return low, high


def parse_hub_id(text: str, label: str | None = None) -> tuple[str, str | None, str]:
    """`ORG/NAME[:CONFIG][@SPLIT]` (without `hf:`) -> (path, config or None, split); an error
    names the recipe key `label` when given."""
    rest, _, split = text.partition("@")
    path, _, name = rest.partition(":")
    parts = (path, name, split)
    if not path or (_ and not name) or ("@" in text and not split) or any(p != p.strip() or "@" in p for p in parts):
        named = f"{label}: " if label else ""
        raise MmloraError(f"{named}'{HUB_SCHEME}{text}': expected {HUB_SCHEME}ORG/NAME[:CONFIG][@SPLIT], "
                          f"e.g. {HUB_SCHEME}HuggingFaceM4/ChartQA@train.")
    return path, name or None, split or "train"


def _from_text(text: str, label: str, **extra) -> DataSource:
    if text.startswith(HUB_SCHEME):
        path, name, split = parse_hub_id(text[len(HUB_SCHEME):], label)
        return DataSource(path, label, hub=True, name=name, split=split, **extra)
    return DataSource(text, label, **extra)


def _positive(value: Any, key: str, where: str, kind: type) -> Any:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf
    if not ok or (kind is int and not isinstance(value, int)):
        raise MmloraError(f"{where}.{key}: got {value!r}, expected a positive {'integer' if kind is int else 'number'}.")
    return kind(value)


def _from_mapping(entry: dict, where: str) -> DataSource:
    unknown = [key for key in entry if key not in SOURCE_KEYS]
    if unknown:
        raise MmloraError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; a data source takes "
                          f"{', '.join(SOURCE_KEYS)}.")
    path = entry.get("path")
    if not isinstance(path, str) or not path:
        raise MmloraError(f"{where}: needs `path` (a data file or folder, or {HUB_SCHEME}ORG/NAME).")
    extra: dict[str, Any] = {}
    for key, kind in (("weight", float), ("min_pixels", int), ("max_pixels", int)):
        if entry.get(key) is not None:
            extra[key] = _positive(entry[key], key, where, kind)
    if extra.get("min_pixels") and extra.get("max_pixels") and extra["min_pixels"] > extra["max_pixels"]:
        raise MmloraError(f"{where}: min_pixels ({extra['min_pixels']}) is larger than max_pixels ({extra['max_pixels']}).")
    if entry.get("format") is not None:
        if entry["format"] not in FORMATS:
            raise MmloraError(f"{where}.format: got {entry['format']!r}, expected one of {', '.join(FORMATS)}.")
        extra["format"] = entry["format"]
    if entry.get("column_map") is not None:
        columns = entry["column_map"]
        columns = [part.strip() for part in columns.split(",")] if isinstance(columns, str) else columns
        if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
            raise MmloraError(f"{where}.column_map: expected a list of source=target entries.")
        extra["column_map"] = tuple(columns)
    label = where
    for key in ("name", "split"):
        if entry.get(key) is not None and (not isinstance(entry[key], str) or not entry[key].strip()):
            raise MmloraError(f"{where}.{key}: got {entry[key]!r}, expected a non-empty string (or leave it out).")
    if entry.get("name") or entry.get("split") or path.startswith(HUB_SCHEME):
        source = _from_text(path if path.startswith(HUB_SCHEME) else HUB_SCHEME + path, label, **extra)
        return replace(source, name=entry.get("name") or source.name, split=entry.get("split") or source.split)
    return DataSource(path, label, **extra)


def data_sources(value: Any, where: str = "data.train") -> list[DataSource]:
    """The sources of a data.train / data.eval value (see module docstring); MmloraError naming
    the entry when one is malformed."""
    if isinstance(value, DataSource):
        return [value]
    if isinstance(value, str):
        return [_from_text(value, where)]
    if isinstance(value, dict):
        return [_from_mapping(value, where)]
    if isinstance(value, list) and value:
        sources = []
        for i, entry in enumerate(value):
            label = f"{where}[{i}]"
            if isinstance(entry, str) and entry:
                sources.append(_from_text(entry, label))
            elif isinstance(entry, dict):
                sources.append(_from_mapping(entry, label))
            else:
                raise MmloraError(f"{label}: got {entry!r}, expected a path, {HUB_SCHEME}ORG/NAME or a mapping "
                                  f"with `path`.")
        _refuse_repeats(sources)
        if not math.isfinite(sum(source.weight for source in sources)):
            raise MmloraError(f"{where}: the weights add up to more than a number can hold; only their ratios "
                              "matter, so use smaller ones (e.g. 3 and 1).")
        return sources
    raise MmloraError(f"{where}: got {value!r}, expected a path, {HUB_SCHEME}ORG/NAME, a mapping with `path`, "
                      "or a list of these (a mixture).")


def _refuse_repeats(sources: list[DataSource]) -> None:
    """A source listed twice (same data, same settings) is a slip: its samples would count twice
    in the epoch while its weight says otherwise."""
    seen: dict[tuple, str] = {}
    for source in sources:
        key = (replace(source, label="", weight=1.0),)
        if key in seen:
            hint = " and give it a larger weight to draw it more often" if source.label.startswith("data.train") else ""
            raise MmloraError(f"{source.label}: {source.display} is already {seen[key]}; list a source once{hint}.")
        seen[key] = source.label


def recipe_sources(value: Any, where: str) -> list[DataSource] | None:
    """`data_sources` for a recipe value; None for what is not one (a `datasets.Dataset` or a
    list of row dicts handed over in Python), which the loaders read as a single source."""
    if isinstance(value, (str, dict, DataSource)):
        return data_sources(value, where)
    if isinstance(value, list) and value and all(isinstance(v, str) or (isinstance(v, dict) and "path" in v)
                                                 for v in value):
        return data_sources(value, where)
    return None


def describe_data(value: Any) -> str:
    """A data.train / data.eval value in one line for reports: its sources as the recipe spells them."""
    sources = recipe_sources(value, "data")
    return " + ".join(source.display for source in sources) if sources else str(value)

