"""Datasets -> chat samples `{"images": [...], "messages": [...]}`, with images checked.

Reading files and folders is sources.py's job, row formats formats.py's, safe image loading
images.py's; the pre-scan before training (scan.py) builds on `iter_samples`. See docs/data.md.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from mmlora.config.paths import resolve_data_path
from mmlora.config.sources import HUB_SCHEME, DataSource, recipe_sources
from mmlora.data.formats import parse_column_map, row_to_samples
from mmlora.data.hub import load_hub_dataset
from mmlora.data.images import ImageInfo, inspect_image, resolve_image
from mmlora.data.rowtext import field_list
from mmlora.data.samples import RowError, Sample
from mmlora.data.sources import open_source
from mmlora.errors import MmloraError

log = logging.getLogger(__name__)


@dataclass
class RowResult:
    """What became of one raw row: its samples, or the problem that made it unusable."""

    where: str
    samples: list[Sample] = field(default_factory=list)
    problem: RowError | None = None


def image_root(cfg) -> Path | None:
    """data.image_root as a path (asset:// allowed), or None for "the dataset's own folder"."""
    return resolve_data_path(cfg.image_root) if cfg.image_root else None


def iter_samples(source, cfg, expand_captions: bool = False) -> Iterator[RowResult]:
    """Every row of `source` (a path, `asset://` name, `datasets.Dataset` or list of rows) as
    samples with image references resolved and checked to exist, or as a located problem.

    expand_captions: one sample per caption when data.captions_per_image is `all` (training);
    otherwise one sample per row with every caption as a reference (evaluation).
    A `DataSource` (one entry of data.train, mmlora/config/sources.py) brings its own format,
    column_map and pixel bounds; an error in it names the entry.
    """
    if isinstance(source, str):
        source = recipe_sources(source, "data")[0]
    if not isinstance(source, DataSource):
        yield from _results(source, cfg, expand_captions)
        return
    bounds = source.bounds()
    with located(source):
        rows = load_hub_dataset(source, cfg.streaming) if source.hub else local_path(source)
        for result in _results(rows, source.data_config(cfg), expand_captions, source.display):
            for sample in result.samples:
                sample.pixel_bounds = bounds
            yield result


@contextlib.contextmanager
def located(source: DataSource):
    """An MmloraError raised inside names the recipe entry `source` (`data.train[2]: ...`)."""
    try:
        yield
    except MmloraError as err:
        if isinstance(err, RowError) or str(err).startswith(source.label) or source.label == "data":
            raise  # already located, or a value given without its recipe key (nothing to add)
        raise MmloraError(f"{source.label}: {err}") from None


def _results(source, cfg, expand_captions: bool, name: str = "dataset") -> Iterator[RowResult]:
    opened, column_map, rows = open_rows(source, cfg, name)
    for where, row in rows:
        yield row_result(where, row, cfg, column_map, opened, expand_captions)


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def local_path(source: DataSource) -> Path:
    """The path of a local source; one that does not exist but reads as a hub id says how to load that."""
    path = resolve_data_path(source.path)
    if not path.exists() and HUB_ID.fullmatch(source.path) and not path.suffix:  # ORG/NAME, not dir/file.jsonl
        raise MmloraError(f"{source.label}: '{source.path}' does not exist here. For the hub dataset of that "
                          f"name write {HUB_SCHEME}{source.path} (optionally :CONFIG and @SPLIT); for a local "
                          "file or folder, check the path.")
    return path


def iter_split(value, cfg, expand_captions: bool = False, where: str = "data") -> Iterator[RowResult]:
    """`iter_samples` over every source of a data.train / data.eval value (`where` names it), in order."""
    for source in recipe_sources(value, where) or [value]:
        yield from iter_samples(source, cfg, expand_captions)


def open_rows(source, cfg, name: str = "dataset", raw: bool = False):
    """(the opened source, data.column_map parsed, its raw `(where, row)` pairs) of a path, a
    `datasets.Dataset` (named `name` in messages) or a list of rows: the recipe's column map is
    checked against the columns before any row (or, for JSON, after the last).
    raw: JSON Lines lines after the first may come unparsed (jsonrows.RawLine), unless a column
    map is set (its check needs every row's columns)."""
    if isinstance(source, str):
        source = resolve_data_path(source)
    column_map = parse_column_map(cfg.column_map)  # a recipe mistake before any file is read
    opened = open_source(source, image_root(cfg), name, raw and not column_map)
    if opened.columns is not None:
        check_mapped_columns(opened.name, column_map, opened.columns)

    def rows():
        seen = set()  # JSON rows may differ: a mapped column is missing only if no row has it
        for where, row in opened.rows:
            if column_map and opened.columns is None and isinstance(row, dict):
                seen.update(row)
            yield where, row
        if column_map and opened.columns is None and seen:
            check_mapped_columns(opened.name, column_map, sorted(seen), "no row has")

    return opened, column_map, rows()


def row_result(where: str, row, cfg, column_map: dict[str, str], opened, expand_captions: bool,
               resolved: dict | None = None) -> RowResult:
    """One raw row of `opened` (a sources.Source) as samples with resolved images, or its problem.
    `resolved`: image paths already resolved in this scan (the Arrow scan's workers keep one;
    rows of one image come together, and each path is then checked once)."""
    if isinstance(row, RowError):
        return RowResult(where, problem=row.at(where))
    try:
        samples = row_to_samples(row, cfg, column_map, where, expand_captions)
        outside_ok = cfg.allow_outside_root or not opened.confined
        for sample in samples:
            sample.images = [_resolved(ref, opened.root, outside_ok, cfg.allow_urls, resolved) for ref in sample.images]
    except RowError as err:
        return RowResult(where, problem=err.at(where))
    return RowResult(where, samples)


def _resolved(ref, root: Path, outside_ok: bool, allow_urls: bool, resolved: dict | None):
    """resolve_image, a local path looked up in `resolved` first (and kept there once found)."""
    if resolved is None or not isinstance(ref, str):
        return resolve_image(ref, root, outside_ok, allow_urls)
    key = (ref, root, outside_ok, allow_urls)
    found = resolved.get(key)
    if found is None:
        found = resolve_image(ref, root, outside_ok, allow_urls)
        if isinstance(found, Path):  # URLs and data: URIs are cheap; errors are raised again each row
            resolved[key] = found
    return found


def check_mapped_columns(name: str, column_map: dict[str, str], columns: list[str], lacks: str = "it has no") -> None:
    """MmloraError, once for the file, when data.column_map names a column the data lacks."""
    absent = [source for source in column_map if source not in columns]
    if absent:
        pairs = ", ".join(f"'{source}' onto '{column_map[source]}'" for source in absent)
        names = ", ".join(f"'{source}'" for source in absent)
        raise MmloraError(f"{name}: data.column_map maps {pairs}, but {lacks} column "
                          f"{names} (its columns: {field_list(columns)}). "
                          "Fix the column name in data.column_map.")


class ImageChecker:
    """`inspect_image` once per distinct image (datasets repeat images across rows); a bad
    image's error is remembered and raised again for every row that uses it."""

    def __init__(self, decode: bool = True):
        self.decode, self.seen = decode, {}

    def __call__(self, ref) -> ImageInfo:
        key = _image_key(ref)
        if key not in self.seen:
            try:
                self.seen[key] = inspect_image(ref, decode=self.decode)
            except RowError as err:
                self.seen[key] = err
        if isinstance(self.seen[key], RowError):
            raise self.seen[key]
        return self.seen[key]


def _image_key(ref):
    if isinstance(ref, (bytes, bytearray)):
        return hashlib.sha1(ref).hexdigest()
    return str(ref) if isinstance(ref, (str, Path)) else id(ref)


def load_samples(path, cfg, task: str | None = None, expand_captions: bool = False,
                 check_images: bool = True, where: str = "data") -> list[Sample]:
    """Every usable sample of a dataset (one per row unless expand_captions), its images
    checked as data.image_check says (the token-length checks of training are in scan.py).

    Bad rows raise an MmloraError naming file, row and field (data.on_error=raise) or are
    skipped and counted in a warning (skip).
    """
    samples, skipped = [], collections.Counter()
    check = ImageChecker(decode=cfg.image_check == "decode")
    for result in iter_split(path, cfg, expand_captions, where):
        if result.problem is None and check_images:
            try:
                for sample in result.samples:
                    for ref in sample.images:
                        check(ref)
            except RowError as err:
                result.problem = err.at(result.where)
        if result.problem is not None:
            if cfg.on_error == "raise":
                raise MmloraError(f"{result.problem} (set data.on_error=skip to skip bad rows)")
            skipped[result.problem.reason] += 1
            if sum(skipped.values()) <= 10:  # the first few in full, then only the counts
                log.warning("skipping %s", result.problem)
            continue
        samples.extend(result.samples)
    counts = ", ".join(f"{reason} {n}" for reason, n in sorted(skipped.items()))
    if skipped:
        log.warning("%s: skipped %d bad row(s): %s", path, sum(skipped.values()), counts)
    if not samples:
        what = f"all {sum(skipped.values())} rows were skipped: {counts}" if skipped else "it has no rows"
        raise MmloraError(f"Data '{path}' has no usable rows ({what}); `mmlora data check RECIPE` lists each "
                          "bad row with its reason.")
    return samples
