"""Where rows come from: JSON Lines, JSON arrays, CSV, Parquet, `datasets` folders, imagefolders.

Each reader yields `(where, row)` pairs, `where` naming the file and line or row, and yields a
RowError in place of a row it cannot parse (malformed JSON, non-UTF-8 text), so a bad line is
counted or reported with its location instead of aborting the whole file. A file that cannot be
read at all is an MmloraError.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from mmlora.data.csvrows import csv_header, csv_rows
from mmlora.data.jsonrows import json_file_rows, jsonl_rows
from mmlora.data.pathkinds import FOLDER, not_a_file
from mmlora.data.samples import RowError
from mmlora.errors import MmloraError

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
    columns: list[str] | None = None
    """Columns every row has (CSV header, Parquet/Arrow schema), None when rows may differ (JSON)."""


def open_source(source, image_root: Path | None = None, name: str = "dataset", raw: bool = False) -> Source:
    """Rows from a file or folder path, a `datasets.Dataset` / `IterableDataset` (named `name`
    in messages), or a list of row dicts. raw: a JSON Lines file's lines after the first come
    unparsed (jsonrows.RawLine; see jsonl_rows)."""
    if isinstance(source, list):
        rows = ((f"row {i}", r) for i, r in enumerate(source, 1))
        return Source("rows", image_root or Path.cwd(), rows, confined=image_root is not None)
    if not isinstance(source, (str, Path)):  # a datasets.Dataset in memory, or a streamed one
        columns = source.column_names  # None for a streamed set whose features are not known yet
        return Source(name, image_root or Path.cwd(), _arrow_rows(source, name), image_root is not None,
                      list(columns) if columns is not None else None)
    path = Path(source)
    problem = not_a_file(path)
    if problem and problem.kind == FOLDER:
        rows, root, columns = _folder_rows(path)
        return Source(str(path), image_root or root, rows, columns=columns)
    if problem:
        raise MmloraError(f"Data '{path}' {problem} (give a .jsonl/.json/.csv/.parquet file or a dataset folder).")
    return Source(str(path), image_root or path.parent, file_rows(path, raw), columns=file_columns(path))


def file_rows(path: Path, raw: bool = False) -> Rows:
    """Rows of one data file, by extension (`raw`: see open_source)."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return jsonl_rows(path, raw)
    if suffix == ".json":
        return json_file_rows(path, raw)
    if suffix in (".csv", ".tsv"):
        return csv_rows(path, "\t" if suffix == ".tsv" else ",")
    if suffix == ".parquet":
        return _parquet_rows(path)
    raise MmloraError(f"Data file '{path}': unknown extension '{suffix}' (use .jsonl, .json, .csv, .tsv or .parquet).")


def file_columns(path: Path) -> list[str] | None:
    """The columns every row of a file has (CSV header, Parquet schema); None for JSON."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return csv_header(path, "\t" if suffix == ".tsv" else ",")
    if suffix == ".parquet":
        return list(_open_parquet(path).schema_arrow.names)
    return None


def _open_parquet(path: Path):
    import pyarrow.parquet as pq

    try:
        # Files written with page checksums (write_page_checksum=True) are verified: a flipped
        # byte in a dictionary-encoded page otherwise decodes silently as another row's value.
        return pq.ParquetFile(path, page_checksum_verification=True)
    except Exception as err:  # noqa: BLE001 - pyarrow raises several types for unreadable files
        raise MmloraError(f"{path}: not a readable Parquet file ({err}).") from None


def _parquet_rows(path: Path) -> Rows:
    """Row group by row group: a corrupt group (its footer entry intact, its pages not) is one
    located error for the rows it holds, and the other groups are still read."""
    parquet = _open_parquet(path)
    groups = parquet.metadata.num_row_groups
    number = 0
    for group in range(groups):
        end = number + parquet.metadata.row_group(group).num_rows
        try:
            for batch in parquet.iter_batches(batch_size=256, row_groups=[group]):
                for row in batch.to_pylist():
                    number += 1
                    yield f"{path} row {number}", row
        except Exception as err:  # noqa: BLE001 - pyarrow raises OSError / ArrowInvalid for bad pages
            yield f"{path} rows {number + 1}-{end}", RowError(
                "corrupt_file", f"row group {group + 1} of {groups} is corrupt, its {end - number} remaining row(s) "
                                f"cannot be read ({_first_line(err)}); rewrite the file from its source")
        number = end


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _arrow_rows(dataset, name: str) -> Rows:
    """Rows of a `datasets.Dataset` as stored: Image columns stay `{"bytes", "path"}` (undecoded)."""
    number = 0
    try:
        for batch in dataset.with_format("arrow").iter(batch_size=256):
            for row in batch.to_pylist():
                number += 1
                yield f"{name} row {number}", row
    except Exception as err:  # noqa: BLE001 - pyarrow raises several types for damaged files
        raise MmloraError(f"{name}: the dataset's Arrow data cannot be read after row {number} "
                          f"({_first_line(err)}); save the dataset again.") from None


def _folder_rows(path: Path) -> tuple[Rows, Path, list[str] | None]:
    """A `save_to_disk` dataset, an imagefolder with a metadata file, or a folder of Parquet shards."""
    if (path / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in path.iterdir() if p.is_dir())
        raise MmloraError(f"'{path}' holds several splits ({', '.join(splits)}): point the recipe at one "
                          f"of them, e.g. {path / splits[0]}" if splits else f"'{path}' holds no splits.")
    if (path / "state.json").is_file() and (path / "dataset_info.json").is_file():
        dataset = load_saved_dataset(path)
        return _arrow_rows(dataset, str(path)), path, list(dataset.column_names)
    for name in METADATA_FILES:
        if (path / name).is_file():
            return _imagefolder_rows(path / name), path, None
    shards = sorted(path.glob("*.parquet"))
    if shards:
        return (row for shard in shards for row in _parquet_rows(shard)), path, file_columns(shards[0])
    raise MmloraError(
        f"'{path}' is a folder without a dataset: expected a `datasets` save_to_disk folder, an "
        f"imagefolder with {' / '.join(METADATA_FILES)}, or Parquet files."
    )


def load_saved_dataset(path: Path):
    """`datasets.load_from_disk`, a damaged Arrow file named in one line."""
    import datasets

    try:
        return datasets.load_from_disk(str(path))
    except Exception as err:  # noqa: BLE001 - pyarrow/datasets raise many types for damaged files
        damaged = [f.name for f in sorted(path.glob("*.arrow")) if not _arrow_file_readable(f)]
        which = f"{', '.join(damaged)} is truncated or corrupt" if damaged else "it cannot be loaded"
        raise MmloraError(f"'{path}' is a `datasets` save_to_disk folder, but {which} ({_first_line(err)}); "
                          "save the dataset again.") from None


def _arrow_file_readable(path: Path) -> bool:
    import pyarrow as pa

    try:
        with pa.memory_map(str(path)) as source:
            pa.ipc.open_stream(source).read_all()
        return True
    except Exception:  # noqa: BLE001 - any failure means this file is the damaged one
        return False


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
