"""Score a JSONL predictions file (backs ``mmlora score``).

Format: one JSON object per line, blank lines ignored::

    {"prediction": "a dog on a couch", "references": ["a dog lying on a sofa", "..."]}
    {"prediction": "2", "answers": ["2", "two", "3", ...]}             # VQA

* ``prediction``: a string.
* ``references``: a non-empty list of strings (a single string is accepted and
  means one reference).  For ``task="vqa"`` the key may be ``answers`` instead,
  and its items may be VQA annotation dicts ``{"answer": "..."}``.
* Other keys (``id``, ``question``, ``image`` ...) are ignored.

Every problem raises :class:`PredictionFileError` (a ``ValueError``) naming the
file, the 1-based line number and the offending field.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from os import PathLike
from typing import Any, Literal

from mmlora.evaluation.metrics.caption import caption_scores
from mmlora.evaluation.metrics.vqa import vqa_scores

__all__ = ["PredictionFileError", "read_predictions_file", "score_predictions_file"]

Task = Literal["vqa", "caption"]
TASKS = ("vqa", "caption")


class PredictionFileError(ValueError):
    """A malformed predictions file; ``path``, ``line`` and ``field`` say where."""

    def __init__(self, path: str, line: int, field: str | None, problem: str):
        self.path, self.line, self.field = path, line, field
        where = f"{path}, line {line}" + (f", field '{field}'" if field else "")
        super().__init__(f"{where}: {problem}")


def _reference_list(value: Any, task: str, path: str, line: int, key: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        raise PredictionFileError(path, line, key, "must be a non-empty list of strings")
    refs = []
    for i, item in enumerate(value):
        # VQA annotations store answers as {"answer": ..., "answer_id": ...}.
        if task == "vqa" and isinstance(item, dict) and isinstance(item.get("answer"), str):
            item = item["answer"]
        if not isinstance(item, str):
            raise PredictionFileError(
                path, line, key, f"item {i} is {type(item).__name__}, expected a string"
            )
        refs.append(item)
    return refs


def read_predictions_file(
    path: str | PathLike[str], task: Task
) -> Iterator[tuple[str, list[str]]]:
    """Yield ``(prediction, references)`` for each record of a JSONL file, validating it."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    name = str(path)
    ref_keys = ("references", "answers") if task == "vqa" else ("references",)
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                problem = f"invalid JSON ({exc.msg})"
                raise PredictionFileError(name, line_no, None, problem) from None
            if not isinstance(record, dict):
                raise PredictionFileError(name, line_no, None, "expected a JSON object")
            prediction = record.get("prediction")
            if not isinstance(prediction, str):
                problem = "missing" if "prediction" not in record else (
                    f"is {type(prediction).__name__}, expected a string")
                raise PredictionFileError(name, line_no, "prediction", problem)
            key = next((k for k in ref_keys if k in record), None)
            if key is None:
                raise PredictionFileError(name, line_no, " or ".join(ref_keys), "missing")
            yield prediction, _reference_list(record[key], task, name, line_no, key)


def score_predictions_file(path: str | PathLike[str], task: Task,
                           vqa_normalization: str = "always") -> dict[str, float | int | str]:
    """Score a JSONL predictions file with the task's metrics.

    Args:
        path: the JSONL file (format in the module docstring).
        task: ``"vqa"`` -> :func:`~mmlora.evaluation.metrics.vqa.vqa_scores` (``vqa_accuracy``,
            ``exact_match``, ``anls``, ``count``, and ``vqa_normalization``: the rule
            VQA accuracy was computed with); ``"caption"`` ->
            :func:`~mmlora.evaluation.metrics.caption.caption_scores` (``bleu_1..4``,
            ``rouge_l``, ``cider_d``) plus ``count``.
        vqa_normalization: ``"always"`` or ``"official"`` (:func:`~mmlora.evaluation.metrics.vqa.vqa_accuracy`).

    Raises:
        PredictionFileError: a bad line (file, line number and field in the message).
        ValueError: an unknown task or a file without records.
        OSError: the file cannot be read.
    """
    records = list(read_predictions_file(path, task))
    if not records:
        raise ValueError(f"{path}: no predictions to score (the file has no records)")
    predictions = [p for p, _ in records]
    references = [r for _, r in records]
    if task == "vqa":
        vqa = dict(vqa_scores(predictions, references, normalization=vqa_normalization))
        return {**vqa, "vqa_normalization": vqa_normalization}
    scores: dict[str, float | int | str] = dict(caption_scores(predictions, references))
    scores["count"] = len(records)
    return scores
