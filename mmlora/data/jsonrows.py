"""JSON Lines and JSON files -> rows, with what real exports get wrong reported clearly.

- One object per line (JSON Lines): a bad line is a located row error, the other lines are read.
- A byte-order mark (UTF-8 or UTF-16) is removed before parsing (mmlora.data.textfiles).
- A whole JSON document (a `.json` array, a pretty-printed file): its rows; a wrapper object
  such as `{"data": [...]}` is refused at file level naming the key that holds the list.
- Nesting deeper than Python's parser allows (its recursion limit) is a row or file error,
  not a RecursionError.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from mmlora.data.rowtext import field_list
from mmlora.data.samples import FIELDS, RowError
from mmlora.data.textfiles import check_decodes, first_text, read_text, sniff_encoding
from mmlora.errors import MmloraError

Rows = Iterator[tuple[str, Any]]
WHOLE_DOCUMENT_LIMIT = 256 * 1024 * 1024
"""A JSON Lines file whose first line fails is tried as one document only up to this size."""
TOO_DEEP = "nested too deeply for Python's JSON parser (hundreds of levels of [ or {)"
JSON_WHITESPACE = " \t\r\n"


def parse_json(text: str):
    """json.loads, with every failure a RowError (malformed_json)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise RowError("malformed_json", f"not a valid JSON line ({err.msg} at column {err.colno})") from None
    except RecursionError:
        raise RowError("malformed_json", TOO_DEEP) from None


def json_file_rows(path: Path, raw: bool = False) -> Rows:
    """A `.json` file: a JSON array or one object (spread over lines or not), else JSON Lines
    (`raw` as for jsonl_rows)."""
    head = first_text(path).lstrip()
    if head.startswith("["):
        return document_rows(path, _whole_document(path, strict=True))
    if head.startswith("{") and path.stat().st_size <= WHOLE_DOCUMENT_LIMIT:
        if _second_value_follows(path):
            # JSON Lines: as one document it fails at its second line ("Extra data"), or at a
            # bad byte anywhere (a file error, kept): found without reading the file whole.
            check_decodes(path)
            return jsonl_rows(path, raw)
        document = _whole_document(path, strict=False)
        if document is not None:
            return document_rows(path, document)
        return jsonl_rows(path, raw, document_tried=True)
    return jsonl_rows(path, raw)


def _second_value_follows(path: Path) -> bool:
    """True when the file's first line that is not blank holds one whole JSON value and a later
    line holds more than JSON whitespace; False when unsure (the whole document is tried)."""
    if not sniff_encoding(path).startswith("utf-8"):
        return False
    seen_value = False
    with path.open("rb") as handle:
        for number, raw in enumerate(handle):
            try:
                text = raw.decode("utf-8").removeprefix("\ufeff" if number == 0 else "")
            except UnicodeDecodeError:
                return False
            if not text.strip(JSON_WHITESPACE):
                continue
            if seen_value:
                return True
            try:
                json.loads(text)
            except (ValueError, RecursionError):  # not one value (or too deep, or a huge number)
                return False
            seen_value = True
    return False


def _whole_document(path: Path, strict: bool):
    """The file parsed as one JSON document; None when it is not one (and not strict)."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as err:
        if not strict:
            return None
        raise MmloraError(f"{path}: not a valid JSON array ({err.msg} at line {err.lineno} column {err.colno}).") from None
    except RecursionError:
        raise MmloraError(f"{path}: {TOO_DEEP}.") from None


def document_rows(path: Path, document) -> Rows:
    """Rows of a parsed JSON document: an array's items, or a single row object."""
    if isinstance(document, list):
        return ((f"{path} row {i}", row) for i, row in enumerate(document, start=1))
    if isinstance(document, dict):
        wrapped = object_list_keys(document)
        # A row's own lists of objects (messages, conversations, VQAv2-style answers) are not a wrapper.
        if wrapped and not any(key in FIELDS for key in document):
            key, rows = wrapped[0], document[wrapped[0]]
            raise MmloraError(
                f"{path}: expected a list of rows (a JSON array, or one object per line), got one JSON object "
                f"whose key '{key}' holds a list of {len(rows)} objects. Save that list alone, e.g. "
                f"`jq '.{key}' {path.name} > rows.json`, or one row per line with `jq -c '.{key}[]'`.")
        return iter([(f"{path}:1", document)])
    raise MmloraError(f"{path}: expected a list of rows (a JSON array, or one object per line), "
                      f"got a JSON {type(document).__name__}.")


class RawLine(str):
    """A JSON Lines line yielded unparsed (`jsonl_rows(raw=True)`); `parse_line` makes it its row."""


def parse_line(text: str):
    """One JSON Lines line as its row; a RowError (malformed_json) when it is not JSON."""
    # A BOM at the start of a later line: files with BOMs concatenated (`cat a.jsonl b.jsonl`).
    return parse_json(text.removeprefix("\ufeff"))


def jsonl_rows(path: Path, raw: bool = False, document_tried: bool = False) -> Rows:
    """JSON Lines, line by line; a file whose first line is not JSON but which is one JSON
    document as a whole (pretty-printed) is read as that document.

    raw: every line after the first one that holds something is yielded as a `RawLine`, not
    parsed (the Arrow pre-scan parses lines in its worker processes, with `parse_line`, into
    the rows and errors this function would have given); blank lines and undecodable bytes
    are handled here all the same. `document_tried`: the caller found the file is not one
    document (json_file_rows), so it is not parsed whole again."""
    codec = sniff_encoding(path)
    lines = _utf8_lines(path, codec) if codec.startswith("utf-8") else _decoded_lines(path)
    first = True
    for number, text in lines:
        where = f"{path}:{number}"
        if isinstance(text, RowError):
            yield where, text
            continue
        if not text.strip():
            continue
        if raw and not first:
            yield where, RawLine(text)
            continue
        try:
            row = parse_line(text)
        except RowError as err:
            if first and not document_tried and err.detail != TOO_DEEP and path.stat().st_size <= WHOLE_DOCUMENT_LIMIT:
                document = _whole_document(path, strict=False)
                if document is not None:
                    yield from document_rows(path, document)
                    return
            yield where, err
            first = False
            continue
        first = False
        yield where, row


def _utf8_lines(path: Path, codec: str):
    """(line number, text or RowError): lines decoded one by one, so a bad byte is one bad row."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and codec == "utf-8-sig":
                raw = raw[3:]
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield number, RowError("not_utf8", f"not valid UTF-8 ({err.reason} at byte {err.start})")


def _decoded_lines(path: Path):
    # UTF-16/32 files (with a BOM) are decoded whole; "\n" only, as JSON Lines defines lines.
    return enumerate(read_text(path).split("\n"), start=1)


def object_list_keys(row: dict) -> list[str]:
    """The keys of `row` whose values are non-empty lists of objects (what a wrapper holds)."""
    return [key for key, value in row.items() if isinstance(value, list) and value
            and all(isinstance(item, dict) for item in value)]


def describe_wrapper(row: dict) -> str:
    """A hint for a row with no known fields that holds a list of objects (a wrapper)."""
    lists = object_list_keys(row)
    if not lists:
        return ""
    return (f"; field {field_list(lists)} holds a list of objects: a file of rows was expected (one object "
            "per line, or a JSON array of objects), not one object wrapping them")
