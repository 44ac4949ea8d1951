"""Which metrics each task reports, and per-sample scores for reports.

One place for the task -> metrics mapping: `mmlora eval`, `mmlora score`, evaluation during
training and recipe validation (`eval.best_metric`) all read it from here.

* ``vqa``: VQA accuracy (the primary metric), exact match and ANLS
  (:mod:`mmlora.evaluation.metrics.vqa`); a sample counts as *correct* when its normalised answer equals
  a normalised reference (exact match).
* ``caption``: BLEU-1..4, ROUGE-L and CIDEr-D (primary) as the COCO caption evaluation
  computes them (:mod:`mmlora.evaluation.metrics.caption`); a sample is *correct* when its tokenised
  caption equals a tokenised reference, which real captioning models rarely achieve, so the
  per-image CIDEr-D is the score to read there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mmlora.evaluation.metrics.caption import caption_scores
from mmlora.evaluation.metrics.cider import cider_d_per_image
from mmlora.evaluation.metrics.tokenize import coco_tokenize
from mmlora.evaluation.metrics.vqa import exact_match, vqa_accuracy, vqa_scores

__all__ = ["PRIMARY_METRIC", "TASK_METRICS", "TaskScores", "VQA_NORMALIZATIONS", "score_task"]

TASK_METRICS: dict[str, tuple[str, ...]] = {
    "vqa": ("vqa_accuracy", "exact_match", "anls"),
    "caption": ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider_d"),
}
"""Corpus metrics reported for each task, in report order."""

PRIMARY_METRIC = {"vqa": "vqa_accuracy", "caption": "cider_d"}
"""The per-sample score written to predictions.jsonl and used for breakdowns."""


@dataclass
class TaskScores:
    metrics: dict[str, float | int]
    """Corpus metrics (``TASK_METRICS[task]``) plus ``count``."""
    per_sample: list[float]
    """The primary metric of each sample (VQA accuracy, or CIDEr-D with corpus document
    frequencies)."""
    correct: list[bool]
    """Whether each prediction matches a reference after the task's normalisation."""


def _caption_key(text: str) -> str:
    return " ".join(coco_tokenize(text))


VQA_NORMALIZATIONS = ("always", "official")
"""How VQA accuracy normalises answers (mmlora.evaluation.metrics.vqa.vqa_accuracy): `always` both sides,
`official` as vqaEval.py does, only when the annotators' answers disagree."""


def score_task(task: str, predictions: Sequence[str], references: Sequence[Sequence[str]],
               vqa_normalization: str = "always") -> TaskScores:
    """Corpus metrics, per-sample primary scores and correctness of a set of predictions.

    `vqa_normalization` (vqa only): the VQA-accuracy rule, `always` or `official`; exact match
    and ANLS have one rule each and ignore it.
    """
    if task not in TASK_METRICS:
        raise ValueError(f"task must be one of {', '.join(TASK_METRICS)}, got {task!r}")
    predictions, references = list(predictions), [list(r) for r in references]
    if task == "vqa":
        metrics = dict(vqa_scores(predictions, references, normalization=vqa_normalization))
        per_sample = [vqa_accuracy(p, r, normalization=vqa_normalization) for p, r in zip(predictions, references)]
        correct = [exact_match(p, r) == 1.0 for p, r in zip(predictions, references)]
        return TaskScores(metrics, per_sample, correct)
    metrics = dict(caption_scores(predictions, references))
    metrics["count"] = len(predictions)
    tokenized = [_caption_key(p) for p in predictions]
    tokenized_refs = [[_caption_key(r) for r in refs] for refs in references]
    per_sample = cider_d_per_image(tokenized, tokenized_refs)
    correct = [p in refs for p, refs in zip(tokenized, tokenized_refs)]
    return TaskScores(metrics, per_sample, correct)
