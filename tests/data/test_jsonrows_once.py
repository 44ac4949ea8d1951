"""A `.json` file is parsed as a whole at most once, and a JSON Lines `.json` file is never held
in memory whole; the rows and errors are those of a whole read."""

import json
import re
import tracemalloc

import pytest

import mmlora.data.jsonrows as jsonrows
from mmlora.data.jsonrows import json_file_rows
from mmlora.errors import MmloraError


def test_json_lines_in_a_json_file_are_read_line_by_line(tmp_path):
    path = tmp_path / "rows.json"
    row = {"image": "a.png", "question": "What is in the picture? " * 4, "answer": "a cat"}
    path.write_text("\n".join(json.dumps({**row, "id": i}) for i in range(40_000)) + "\n")
    size = path.stat().st_size  # about 6 MB
    tracemalloc.start()
    try:
        ids = [row["id"] for _, row in json_file_rows(path)]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert ids == list(range(40_000))
    assert peak < size / 3  # a whole read holds the bytes and the text (twice the file)


def test_a_broken_document_is_parsed_whole_once_and_gives_the_line_errors(tmp_path, monkeypatch):
    path = tmp_path / "cut.json"
    path.write_text('{\n  "image": "a.png",\n  "caption": "a cat"\n')  # the closing } is missing
    reads, real = [], jsonrows.read_text
    monkeypatch.setattr(jsonrows, "read_text", lambda p: reads.append(p) or real(p))  # counts, reads as before
    rows = list(json_file_rows(path))
    assert len(reads) == 1
    assert [(where.rsplit(":", 1)[1], err.reason) for where, err in rows] == [
        ("1", "malformed_json"), ("2", "malformed_json"), ("3", "malformed_json")]


def test_a_bad_byte_in_json_lines_in_a_json_file_is_still_the_file_error(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"image": "a.png", "caption": "x"}\n{"image": "b.png", "caption": "caf\xe9"}\n')
    with pytest.raises(MmloraError, match=re.escape(f"{path}: not valid UTF-8 text (invalid continuation byte "
                                                    "at byte 69, near line 2); re-export the file as UTF-8.")):
        json_file_rows(path)
