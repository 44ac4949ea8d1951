"""VQA metrics: official VQA accuracy, exact match and ANLS.

* :func:`vqa_accuracy` -- the VQA challenge accuracy (Antol et al., ICCV 2015;
  Goyal et al., CVPR 2017), computed as the official ``vqaEval.py``
  (GT-Vision-Lab/VQA) computes it: ``min(#humans that gave the answer / 3, 1)``
  averaged over the leave-one-out subsets of the human answers.
* :func:`exact_match` -- 1 if the normalised prediction equals a normalised
  reference.
* :func:`anls` -- Average Normalized Levenshtein Similarity (Biten et al.,
  "Scene Text Visual Question Answering", ICCV 2019; the ST-VQA and DocVQA
  metric).
* :func:`vqa_scores` -- corpus means of the three, as **fractions in [0, 1]**
  (the official script prints percentages; multiply by 100 to compare).

Answer normalisation lives in :mod:`mmlora.evaluation.metrics.vqa_normalize`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from mmlora.evaluation.metrics.inputs import paired_inputs
from mmlora.evaluation.metrics.vqa_normalize import clean_whitespace, normalize_vqa_answer

__all__ = ["anls", "exact_match", "levenshtein", "vqa_accuracy", "vqa_scores"]

NormalizationMode = Literal["always", "official"]


def _check_references(references: Sequence[str], name: str) -> list[str]:
    if isinstance(references, str):
        raise TypeError(f"{name} must be a list of strings, not a single string")
    refs = list(references)
    if not refs:
        raise ValueError(f"{name} must contain at least one answer")
    return refs


def vqa_accuracy(
    prediction: str,
    answers: Sequence[str],
    *,
    normalization: NormalizationMode = "always",
) -> float:
    """Official VQA accuracy of one predicted answer against the human answers.

    Definition (VQA API ``vqaEval.py``): for each human answer ``i``, take the
    other ``n - 1`` answers, count how many equal the prediction, score
    ``min(count / 3, 1)``; the accuracy is the mean over the ``n`` subsets.  With
    the standard 10 answers, if ``k`` humans gave the predicted answer the result is
    0, 0.3, 0.6, 0.9, 1.0 for k = 0, 1, 2, 3, >=4.

    Fewer than 10 answers: the formula above is applied as the official code would
    apply it (leave-one-out over the ``n`` answers, threshold 3).  So with 2 or 3
    references the maximum is 1/3 or 2/3; datasets with 5 answers (OK-VQA)
    repeat each answer twice to get 10, and callers should do the same.  **One
    deliberate deviation:** with a single reference the official code always
    returns 0 (the only leave-one-out subset is empty); here a single reference
    scores 1.0 on a (normalised) match and 0.0 otherwise, the exact-match
    behaviour users with one reference expect.

    Normalisation:

    * ``"always"`` (default): prediction and every answer go through
      :func:`~mmlora.evaluation.metrics.vqa_normalize.normalize_vqa_answer`.
    * ``"official"``: the current official script's rule -- both sides are only
      whitespace-cleaned, and are normalised only **if the human answers disagree**
      (``len(set(answers)) > 1``).  The script relies on VQA annotations being
      normalised already; with raw references it under-scores (e.g. ``"Yes."``
      against ten ``"yes"`` scores 0).

    The two modes agree whenever the references disagree, and whenever the
    prediction is already normalised; ``"always"`` can only score higher.

    Args:
        prediction: the model's answer.
        answers: the human (reference) answers, typically 10.
        normalization: ``"always"`` or ``"official"`` (see above).

    Returns:
        Accuracy in [0, 1].
    """
    refs = _check_references(answers, "answers")
    if normalization == "always":
        pred = normalize_vqa_answer(prediction)
        refs = [normalize_vqa_answer(a) for a in refs]
    elif normalization == "official":
        pred = clean_whitespace(prediction)
        refs = [clean_whitespace(a) for a in refs]
        # The official script normalises only when the answers disagree: when all
        # annotators agree it compares the raw (whitespace-cleaned) strings.
        if len(set(refs)) > 1:
            pred = normalize_vqa_answer(pred)
            refs = [normalize_vqa_answer(a) for a in refs]
    else:
        raise ValueError(f"normalization must be 'always' or 'official', got {normalization!r}")

    if len(refs) == 1:
        return 1.0 if refs[0] == pred else 0.0

    # Leave-one-out by position: the official code drops the answer *dict* being
    # held out, and answer dicts are unique through their answer_id.
    total_matches = sum(ref == pred for ref in refs)
    subset_scores = []
    for ref in refs:
        matches_in_others = total_matches - (ref == pred)
        subset_scores.append(min(1.0, matches_in_others / 3.0))
    return sum(subset_scores) / len(subset_scores)


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """1.0 if the VQA-normalised prediction equals any VQA-normalised reference.

    Uses :func:`~mmlora.evaluation.metrics.vqa_normalize.normalize_vqa_answer` on both sides
    (so ``"Two."`` matches ``"2"``), else 0.0.
    """
    refs = _check_references(references, "references")
    pred = normalize_vqa_answer(prediction)
    return 1.0 if any(normalize_vqa_answer(r) == pred for r in refs) else 0.0


def levenshtein(a: str, b: str) -> int:
    """Character-level edit distance (insertions, deletions, substitutions cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    # Two-row dynamic programme over the shorter string: O(len(a) * len(b)) time,
    # O(len(b)) memory.
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb))
            )
        previous = current
    return previous[-1]


def anls(prediction: str, references: Sequence[str], threshold: float = 0.5) -> float:
    """Normalized Levenshtein similarity of one answer (the per-question ANLS term).

    Definition (Biten et al., ICCV 2019, ST-VQA; reused by DocVQA and
    InfographicVQA): both strings are lower-cased and stripped; with
    ``NL = levenshtein(p, r) / max(len(p), len(r))`` the similarity is
    ``1 - NL`` if ``NL < threshold`` else 0; the maximum over references is taken.
    The corpus ANLS is the mean of this value over questions (see
    :func:`vqa_scores`).  At exactly ``NL == threshold`` the score is 0, as in the
    paper's definition.  Two empty strings are identical (similarity 1).
    """
    refs = _check_references(references, "references")
    pred = prediction.strip().lower()
    best = 0.0
    for ref in refs:
        ref = ref.strip().lower()
        longest = max(len(pred), len(ref))
        distance = levenshtein(pred, ref) / longest if longest else 0.0
        best = max(best, 1.0 - distance if distance < threshold else 0.0)
    return best


def vqa_scores(
    predictions: Sequence[str],
    references_list: Sequence[Sequence[str]],
    *,
    normalization: NormalizationMode = "always",
    anls_threshold: float = 0.5,
) -> dict[str, float | int]:
    """Corpus VQA metrics: mean VQA accuracy, exact match and ANLS.

    Args:
        predictions: one answer per question.
        references_list: the reference answers of each question.
        normalization: passed to :func:`vqa_accuracy`.
        anls_threshold: passed to :func:`anls`.

    Returns:
        ``{"vqa_accuracy", "exact_match", "anls"}`` as fractions in [0, 1] (not
        percentages) and ``"count"``, the number of questions.

    Raises:
        ValueError: on an empty corpus or mismatched lengths.
    """
    predictions, references_list = paired_inputs(predictions, references_list)
    acc = em = sim = 0.0
    for pred, refs in zip(predictions, references_list):
        acc += vqa_accuracy(pred, refs, normalization=normalization)
        em += exact_match(pred, refs)
        sim += anls(pred, refs, threshold=anls_threshold)
    n = len(predictions)
    return {"vqa_accuracy": acc / n, "exact_match": em / n, "anls": sim / n, "count": n}
