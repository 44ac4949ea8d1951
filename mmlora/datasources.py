"""Where rows come from: JSON Lines, JSON arrays, CSV, Parquet, `datasets` folders, imagefolders.

Each reader yields `(where, row)` pairs, `where` naming the file and line or row, and yields a
RowError in place of a row it cannot parse (malformed JSON, non-UTF-8 text), so a bad line is
counted or reported with its location instead of aborting the whole file. A file that cannot be
read at all is an MmloraError.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from mmlora.errors import MmloraError
from mmlora.samples import RowError

Rows = Iterator[tuple[str, Any]]
METADATA_FILES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")


@dataclass
class Source:
    """Rows of one dataset and the directory its relative image paths resolve against."""

    name: str
    root: Path
    rows: Rows
    confined: bool = True
    """Image paths must stay under `root`. Off for datasets built in Python without an
    image_root: the caller's own code chose their paths (datasets stores PIL images opened
    from files as their absolute paths)."""


def open_source(source, image_root: Path | None = None) -> Source:
    """Rows from a file or folder path, a `datasets.Dataset`, or a list of row dicts."""
    if isinstance(source, list):
        rows = ((f"row {i}", r) for i, r in enumerate(source, 1))
        return Source("rows", image_root or Path.cwd(), rows, confined=image_root is not None)
    if not isinstance(source, (str, Path)):  # a datasets.Dataset in memory
        return Source("dataset", image_root or Path.cwd(), _arrow_rows(source, "dataset"), image_root is not None)
    path = Path(source)
    if path.is_dir():
        rows, root = _folder_rows(path)
        return Source(str(path), image_root or root, rows)
    if not path.is_file():
        raise MmloraError(f"Data '{path}' does not exist (give a .jsonl/.json/.csv/.parquet file or a folder).")
    return Source(str(path), image_root or path.parent, file_rows(path))


def file_rows(path: Path) -> Rows:
    """Rows of one data file, by extension."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return _jsonl_rows(path)
    if suffix == ".json":
        with path.open("rb") as handle:
            starts_as_array = handle.read(64).lstrip().startswith(b"[")
        return _json_array_rows(path) if starts_as_array else _jsonl_rows(path)
    if suffix in (".csv", ".tsv"):
        return _csv_rows(path, "\t" if suffix == ".tsv" else ",")
    if suffix == ".parquet":
        return _parquet_rows(path)
    raise MmloraError(f"Data file '{path}': unknown extension '{suffix}' (use .jsonl, .json, .csv, .tsv or .parquet).")


def _jsonl_rows(path: Path) -> Rows:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path}:{number}"
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield where, RowError("not_utf8", f"not valid UTF-8 ({err.reason} at byte {err.start})")
                continue
            try:
                yield where, json.loads(text)
            except json.JSONDecodeError as err:
                yield where, RowError("malformed_json", f"not a valid JSON line ({err.msg} at column {err.colno})")


def _json_array_rows(path: Path) -> Rows:
    try:
        rows = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MmloraError(f"{path}: not a valid UTF-8 JSON array ({err}).") from None
    if not isinstance(rows, list):
        raise MmloraError(f"{path}: expected a JSON array of rows (or one JSON object per line).")
    yield from ((f"{path} row {i}", row) for i, row in enumerate(rows, start=1))


def _csv_rows(path: Path, delimiter: str) -> Rows:
    # surrogateescape keeps undecodable bytes, so one bad row is reported, not the whole file.
    with path.open(newline="", encoding="utf-8", errors="surrogateescape") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        for row in reader:
            where = f"{path}:{reader.line_num}"
            try:
                "".join(str(v) for v in row.values()).encode("utf-8")
            except UnicodeEncodeError:
                yield where, RowError("not_utf8", "the row is not valid UTF-8")
                continue
            yield where, _present_cells(row)


def _present_cells(row: dict) -> dict:
    """An empty CSV cell is a missing field (cells beyond the header are dropped)."""
    return {key: value for key, value in row.items() if key is not None and value not in ("", None)}


def _parquet_rows(path: Path) -> Rows:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as err:  # noqa: BLE001 - pyarrow raises several types for unreadable files
        raise MmloraError(f"{path}: not a readable Parquet file ({err}).") from None
    number = 0
    for batch in parquet.iter_batches(batch_size=256):
        for row in batch.to_pylist():
            number += 1
            yield f"{path} row {number}", row


def _arrow_rows(dataset, name: str) -> Rows:
    """Rows of a `datasets.Dataset` as stored: Image columns stay `{"bytes", "path"}` (undecoded)."""
    number = 0
    for batch in dataset.with_format("arrow").iter(batch_size=256):
        for row in batch.to_pylist():
            number += 1
            yield f"{name} row {number}", row


def _folder_rows(path: Path) -> tuple[Rows, Path]:
    """A `save_to_disk` dataset, an imagefolder with a metadata file, or a folder of Parquet shards."""
    if (path / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in path.iterdir() if p.is_dir())
        raise MmloraError(f"'{path}' holds several splits ({', '.join(splits)}): point the recipe at one "
                          f"of them, e.g. {path / splits[0]}" if splits else f"'{path}' holds no splits.")
    if (path / "state.json").is_file() and (path / "dataset_info.json").is_file():
        import datasets

        return _arrow_rows(datasets.load_from_disk(str(path)), str(path)), path
    for name in METADATA_FILES:
        if (path / name).is_file():
            return _imagefolder_rows(path / name), path
    shards = sorted(path.glob("*.parquet"))
    if shards:
        return (row for shard in shards for row in _parquet_rows(shard)), path
    raise MmloraError(
        f"'{path}' is a folder without a dataset: expected a `datasets` save_to_disk folder, an "
        f"imagefolder with {' / '.join(METADATA_FILES)}, or Parquet files."
    )


def _imagefolder_rows(metadata: Path) -> Rows:
    """imagefolder metadata: `file_name` -> image, `X_file_name` -> X, `file_names` -> images."""
    for where, row in file_rows(metadata):
        if isinstance(row, dict):
            row = {_imagefolder_column(key): value for key, value in row.items()}
        yield where, row


def _imagefolder_column(key: str) -> str:
    for suffix, default in (("file_names", "images"), ("file_name", "image")):
        if key == suffix:
            return default
        if key.endswith("_" + suffix):
            return key[: -len(suffix) - 1]
    return key
