"""CSV and TSV rows, read strictly: a malformed line is a reported row, never a silent shift.

What spreadsheet exports get wrong, and what becomes of it here:
- A quote that opens a cell and never closes would swallow every later line into that cell:
  reported as a row error naming the lines it spans (`malformed_csv`), including a quote that
  closes many lines later around text that looks like whole rows.
- More cells than the header has columns (an unquoted comma inside a question shifts the
  answer into the next column): a row error, never the extra cells dropped. Empty trailing
  cells (`a,b,c,`) carry nothing and are ignored.
- A quote in the middle of a cell (`a "b" c` unquoted is fine; `"a" b` is not): a row error.
- Cells longer than the csv module's default limit (131072 characters, e.g. a data: URI
  image) are read: the limit is raised to FIELD_LIMIT.
- A byte-order mark (Excel's "CSV UTF-8", UTF-16 "Unicode text") is not part of the first
  header (mmlora.data.textfiles).
An empty cell is an absent field. Header names are stripped of surrounding spaces.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Iterator

from mmlora.data.rowtext import field_list
from mmlora.data.samples import RowError
from mmlora.data.textfiles import read_text, sniff_encoding
from mmlora.errors import MmloraError

FIELD_LIMIT = 256 * 1024 * 1024
"""Characters in one cell: far above any text, room for inline (data: URI) images."""


def _open_text(path: Path):
    codec = sniff_encoding(path)
    if codec.startswith("utf-8"):
        # surrogateescape keeps undecodable bytes, so one bad row is reported, not the whole file.
        return path.open(newline="", encoding=codec, errors="surrogateescape")
    return io.StringIO(read_text(path), newline="")


def _reader(handle, delimiter: str):
    if csv.field_size_limit() < FIELD_LIMIT:
        csv.field_size_limit(FIELD_LIMIT)
    return csv.reader(handle, delimiter=delimiter, strict=True)


def csv_header(path: Path, delimiter: str) -> list[str]:
    """The column names of a CSV/TSV file (first record), stripped."""
    with _open_text(path) as handle:
        try:
            first = next((cells for cells in _reader(handle, delimiter) if cells), [])
        except csv.Error as err:
            raise MmloraError(f"{path}:1: the header line is not valid CSV ({err}).") from None
    return [name.strip() for name in first]


def csv_rows(path: Path, delimiter: str) -> Iterator[tuple[str, Any]]:
    """`(where, row dict | RowError)` for every record after the header; where is `file:line`
    of the line the record starts on."""
    with _open_text(path) as handle:
        reader = _reader(handle, delimiter)
        header = None
        while True:
            start = reader.line_num + 1
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                if header is None:
                    raise MmloraError(f"{path}:{start}: the header line is not valid CSV ({err}).") from None
                yield f"{path}:{start}", RowError("malformed_csv", _parse_error(err, start, reader.line_num))
                continue
            if not cells:
                continue
            if header is None:
                header = _checked_header(path, cells)
                continue
            yield f"{path}:{start}", _record(cells, header, delimiter, start, reader.line_num)


def _checked_header(path: Path, cells: list[str]) -> list[str]:
    header = [name.strip() for name in cells]
    twice = sorted({name for name in header if name and header.count(name) > 1})
    if twice:
        raise MmloraError(f"{path}:1: the header names {field_list(twice)} more than once; "
                          "give every column its own name.")
    return header


def _record(cells: list[str], header: list[str], delimiter: str, start: int, end: int):
    try:
        "".join(cells).encode("utf-8")
    except UnicodeEncodeError:
        return RowError("not_utf8", "the row is not valid UTF-8")
    sign = "tab" if delimiter == "\t" else f"'{delimiter}'"
    extra = cells[len(header):]
    if any(cell.strip() for cell in extra):
        return RowError("malformed_csv", f"the row has {len(cells)} cells but the header has {len(header)} "
                                         f"columns ({field_list(header)}): a {sign} inside a cell that is not "
                                         "quoted? Quote such cells (\"...\") so no answer lands in the wrong column")
    swallowed = _swallowed_lines(cells, header, delimiter)
    if swallowed is not None:
        column, count = swallowed
        return RowError("malformed_csv", f"lines {start}-{end} were read as one row: the quote that opens column "
                                         f"'{column}' on line {start} closes only on line {end}, and the cell holds "
                                         f"{count} line(s) that look like rows. Fix the quote (a quote inside a "
                                         "quoted cell is written twice: \"\")")
    return {name: cell for name, cell in zip(header, cells) if name and cell != ""}


def _swallowed_lines(cells: list[str], header: list[str], delimiter: str) -> tuple[str, int] | None:
    """(column, number of lines) when a multi-line cell looks like a stray quote swallowed rows:
    the record is short of columns, or a line inside the cell has a whole row's separators and
    starts like a row (a first cell without spaces, e.g. an image file name). Multi-line
    captions are legitimate and rarely look like that."""
    for name, cell in zip(header, cells):
        lines = cell.splitlines()[1:]
        if not lines:
            continue
        if len(cells) < len(header):
            return name, len(lines)
        rowlike = [line for line in lines if len(header) > 1 and line.count(delimiter) >= len(header) - 1
                   and line.split(delimiter)[0].strip() and not any(c.isspace() for c in line.split(delimiter)[0])]
        if rowlike:
            return name, len(rowlike)
    return None


def _parse_error(err: csv.Error, start: int, end: int) -> str:
    text = str(err)
    if "unexpected end of data" in text:
        return (f"the quote that opens a cell on line {start} is never closed, so lines {start}-{end} (the rest "
                "of the file) would be one cell. Close the quote (a quote inside a quoted cell is written twice: \"\")")
    if "expected after" in text:
        return (f"a quote in the middle of a cell on line {end} ({text}): quote the whole cell and write "
                "quotes inside it twice (\"\")")
    return f"not valid CSV ({text})"
