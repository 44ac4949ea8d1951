"""The argument check every corpus metric shares: one reference list per prediction."""

from __future__ import annotations

from collections.abc import Iterable


def paired_inputs(predictions: Iterable, references_list: Iterable) -> tuple[list, list]:
    """Both as lists; ValueError on mismatched lengths or an empty corpus."""
    predictions, references_list = list(predictions), list(references_list)
    if len(predictions) != len(references_list):
        raise ValueError(f"got {len(predictions)} predictions but {len(references_list)} reference lists")
    if not predictions:
        raise ValueError("cannot score an empty set of predictions")
    return predictions, references_list
