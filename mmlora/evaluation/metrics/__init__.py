"""Captioning and VQA metrics computed the way the reference implementations compute them.

* VQA (:mod:`mmlora.evaluation.metrics.vqa`): official VQA accuracy, exact match, ANLS, with
  the official answer normalisation (:mod:`mmlora.evaluation.metrics.vqa_normalize`).
* Captioning (:mod:`mmlora.evaluation.metrics.caption`): the COCO caption evaluation's
  BLEU-1..4, ROUGE-L and CIDEr-D, with a pure-Python PTB tokenizer
  (:mod:`mmlora.evaluation.metrics.tokenize`).  METEOR and SPICE are not provided (Java).
* Tasks: :func:`score_task` gives a task's corpus metrics (:data:`TASK_METRICS`), per-sample
  scores and correctness, for reports.
* Files: :func:`score_predictions_file` scores a JSONL of predictions.
* ``evaluate``: :func:`load_metric` loads the shipped ``evaluate`` modules
  (``"vqa_accuracy"``, ``"caption_metrics"``) by path, without network.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmlora.evaluation.metrics.bleu import corpus_bleu
from mmlora.evaluation.metrics.caption import caption_scores
from mmlora.evaluation.metrics.cider import cider_d
from mmlora.evaluation.metrics.rouge import rouge_l
from mmlora.evaluation.metrics.score_file import PredictionFileError, score_predictions_file
from mmlora.evaluation.metrics.task import PRIMARY_METRIC, TASK_METRICS, TaskScores, score_task
from mmlora.evaluation.metrics.tokenize import coco_tokenize
from mmlora.evaluation.metrics.vqa import anls, exact_match, vqa_accuracy, vqa_scores
from mmlora.evaluation.metrics.vqa_normalize import normalize_vqa_answer

if TYPE_CHECKING:  # evaluate is imported lazily: it pulls in datasets/pyarrow.
    import evaluate

__all__ = [
    "EVALUATE_MODULES_DIR",
    "METRIC_NAMES",
    "PRIMARY_METRIC",
    "TASK_METRICS",
    "TaskScores",
    "PredictionFileError",
    "anls",
    "caption_scores",
    "cider_d",
    "coco_tokenize",
    "corpus_bleu",
    "evaluate_module_path",
    "exact_match",
    "load_metric",
    "normalize_vqa_answer",
    "rouge_l",
    "score_predictions_file",
    "score_task",
    "vqa_accuracy",
    "vqa_scores",
]

EVALUATE_MODULES_DIR = Path(__file__).resolve().parent / "evaluate_modules"
METRIC_NAMES = ("vqa_accuracy", "caption_metrics")


def evaluate_module_path(name: str) -> Path:
    """Path of the shipped ``evaluate`` module script ``name`` (see :data:`METRIC_NAMES`)."""
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown metric {name!r}; available: {', '.join(METRIC_NAMES)}")
    return EVALUATE_MODULES_DIR / name / f"{name}.py"


def _writable(path: Path) -> bool:
    """Whether ``path`` exists writable or could be created (nearest existing parent writable)."""
    path = path.expanduser()
    while not path.exists():
        if path.parent == path:
            return False
        path = path.parent
    return os.access(path, os.W_OK)


def load_metric(
    name: str, *, cache_dir: str | os.PathLike[str] | None = None, **kwargs: Any
) -> evaluate.EvaluationModule:
    """Load a shipped metric as an ``evaluate.EvaluationModule``, offline.

    The module is loaded from its file path (``evaluate.load(path)``), so the
    Hugging Face Hub is never contacted.  The module is kept in memory
    (``keep_in_memory=True``) so ``compute`` writes no Arrow cache files.

    ``evaluate`` still writes two things: a copy of the module script under its
    modules cache (``HF_MODULES_CACHE``, default ``~/.cache/huggingface/modules``)
    and an empty per-metric directory under ``cache_dir`` (default
    ``HF_METRICS_CACHE``, ``~/.cache/huggingface/metrics``).  When either location is not writable, a directory
    under the system temp dir is used instead.

    Args:
        name: ``"vqa_accuracy"`` or ``"caption_metrics"``.
        cache_dir: where ``evaluate`` may create its per-metric directory.
        **kwargs: further ``evaluate.load`` arguments (e.g. ``experiment_id``).

    Example::

        metric = load_metric("vqa_accuracy")
        metric.compute(predictions=["two"], references=[["2"] * 10])
    """
    path = evaluate_module_path(name)
    import evaluate  # local: only callers of load_metric pay for importing evaluate

    fallback = Path(tempfile.gettempdir()) / "mmlora-evaluate"
    # evaluate reads the modules cache location from its config at call time, so
    # redirecting it here is enough for a read-only home directory.
    if not _writable(Path(evaluate.config.HF_MODULES_CACHE)):
        evaluate.config.HF_MODULES_CACHE = fallback / "modules"
    if cache_dir is None and not _writable(Path(evaluate.config.HF_METRICS_CACHE)):
        cache_dir = fallback / "metrics"
    kwargs.setdefault("keep_in_memory", True)
    if cache_dir is not None:
        kwargs["cache_dir"] = str(cache_dir)
    return evaluate.load(str(path), **kwargs)
