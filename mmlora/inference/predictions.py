"""`mmlora infer --output preds.jsonl`: one JSON line per answered request, written as answers
come, so an interrupted run loses nothing already answered, and `--resume` answers only what
the file lacks.

Each batch's lines are appended, flushed and synced to disk before the next batch starts. On
resume, a last line cut short by the interruption (no newline at the end, or not JSON) is
removed, and requests whose line is already there (same image(s), prompt and system, and
the same `id` where the line has one) are skipped.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from mmlora.errors import MmloraError


def line_key(shown: dict, with_id: bool = True) -> str:
    """What identifies a request in the output: its image(s), prompt and system, as written, and
    its `id` when it has one (unless not `with_id`). A line without an id keys as before ids
    were repeated, so older answers files match as they did."""
    key = {k: shown.get(k) for k in ("image", "images", "prompt", "system")}
    if with_id and "id" in shown:
        key["id"] = shown["id"]
    return json.dumps(key, sort_keys=True)


def check_output(path: Path, resume: bool) -> None:
    """Before the model loads: an existing answers file is continued only with --resume."""
    if path.is_dir():
        raise MmloraError(f"--output {path} is a folder; give a .jsonl file path.")
    if path.parent.exists() and not path.parent.is_dir():
        raise MmloraError(f"--output {path}: {path.parent} is a file, not a folder; give a path in a folder.")
    if not path.parent.is_dir():
        raise MmloraError(f"--output {path}: the folder {path.parent} does not exist; create it first.")
    if path.is_file() and path.stat().st_size and not resume:
        raise MmloraError(f"--output {path} exists: pass --resume to answer only what it lacks, or choose "
                          "another --output (or delete it).")


def answered_keys(path: Path) -> tuple[dict[str, list[int]], int]:
    """Keys of the answers already in `path` (each with its line numbers) and the number of bytes
    of a cut-off last line that `PredictionWriter` drops. MmloraError for a file that is not an
    answers file."""
    if not path.is_file():
        return {}, 0
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1  # a last line without its newline was being written when stopped
    keys: dict[str, list[int]] = {}
    for number, raw in enumerate(data[:keep].splitlines(), 1):
        try:
            row = json.loads(raw)
        except ValueError:
            row = None
        if not isinstance(row, dict) or "prediction" not in row:
            raise MmloraError(f"{path}:{number}: not an answer line of `mmlora infer` (a JSON object with "
                              "\"prediction\"); --resume continues only such a file: choose another --output.")
        keys.setdefault(line_key(row), []).append(number)
    return keys, len(data) - keep


def unanswered(requests: list[str], answered: dict[str, list[int]], path: Path, source: str,
               without_ids: list[str] | None = None) -> list[int]:
    """Positions of the requests (keys, in input order) that `answered` lacks: each answer line
    stands for one request (a request asked twice is answered twice). `without_ids`: the same
    keys without the requests' ids, which answer lines written without an id (before the input
    had ids, or by an older mmlora) match. An answers file none of whose lines matches a request
    is another input's: MmloraError; some unmatched lines (an edited input) are kept, with one
    warning line."""
    left = {key: list(lines) for key, lines in answered.items()}
    todo = []
    for position, key in enumerate(requests):
        fallback = without_ids[position] if without_ids else key
        if left.get(key):
            left[key].pop(0)
        elif left.get(fallback):
            left[fallback].pop(0)
        else:
            todo.append(position)
    stray = sorted(line for lines in left.values() for line in lines)
    if not stray:
        return todo
    total = sum(len(lines) for lines in answered.values())
    what = f"{len(stray)} of its {total} answer line(s) (first: line {stray[0]}) match no request of {source}"
    if len(stray) == total:
        raise MmloraError(f"--output {path}: {what}, so it answers another input (or another --prompt / --system, "
                          "or other ids); choose another --output for this one.")
    print(f"mmlora: --output {path}: {what} (the input was edited?); they are kept.", file=sys.stderr)
    return todo


class PredictionWriter:
    """Appends answer lines to `path` (truncating a cut-off last line first), synced per batch."""

    def __init__(self, path: Path, torn_bytes: int = 0):
        self.path, self.written = path, 0
        try:
            if torn_bytes:
                with open(path, "r+b") as handle:
                    handle.truncate(path.stat().st_size - torn_bytes)
            self._handle = open(path, "a", encoding="utf-8")
        except OSError as err:
            raise MmloraError(f"--output {path} cannot be written ({err.strerror or err}); choose another "
                              "--output.") from None

    def write(self, rows: list[dict]) -> None:
        """Append `rows` and make them durable before returning; MmloraError when the disk refuses
        (full, gone read-only), saying how many answers are safe and how to continue."""
        try:
            for row in rows:
                self._handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            self._handle.flush()
            os.fsync(self._handle.fileno())
        except OSError as err:
            raise MmloraError(f"--output {self.path}: writing answers failed ({err.strerror or err}) after "
                              f"{self.written} line(s) of this run; make room and rerun with --resume (a cut-off "
                              "last line is dropped then).") from None
        self.written += len(rows)

    def close(self) -> None:
        try:
            self._handle.close()
        except OSError:  # the failed write already said so; what was synced stays
            pass
