"""ROUGE-L exactly as the COCO caption evaluation computes it.

ROUGE-L: Lin, "ROUGE: A Package for Automatic Evaluation of Summaries", ACL
Workshop 2004 (longest-common-subsequence F-measure).  COCO variant:
pycocoevalcap ``rouge/rouge.py`` (tylin/coco-caption), reproduced here:

* for each candidate and each of its references, ``P = LCS / len(candidate)``
  and ``R = LCS / len(reference)`` on tokens;
* the maximum precision and the maximum recall are taken **separately** over
  the references (they may come from different references);
* ``F = (1 + beta^2) P R / (R + beta^2 P)`` with ``beta = 1.2``, 0 if P or R is 0;
* the corpus score is the mean of the per-candidate F.

pycocoevalcap splits its tokenized strings on a single space, so an empty
caption is the one-token list ``[""]``; we keep that convention (it only matters
when a candidate and a reference are both empty: they then match, F = 1).
"""

from __future__ import annotations

from collections.abc import Sequence

from mmlora.evaluation.metrics.bleu import Text, as_tokens
from mmlora.evaluation.metrics.inputs import paired_inputs

__all__ = ["lcs_length", "rouge_l", "rouge_l_sentence"]

BETA = 1.2


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token sequences."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def _tokens(text: Text) -> list[str]:
    tokens = as_tokens(text)
    return tokens if tokens else [""]  # pycocoevalcap: "".split(" ") == [""]


def rouge_l_sentence(prediction: Text, references: Sequence[Text], beta: float = BETA) -> float:
    """ROUGE-L F-measure of one candidate against its references (pycocoevalcap ``calc_score``)."""
    if isinstance(references, str) or not references:
        raise ValueError("references must be a non-empty list")
    candidate = _tokens(prediction)
    precisions, recalls = [], []
    for reference in references:
        ref = _tokens(reference)
        lcs = lcs_length(ref, candidate)
        precisions.append(lcs / len(candidate))
        recalls.append(lcs / len(ref))
    p, r = max(precisions), max(recalls)
    if p == 0 or r == 0:
        return 0.0
    return ((1 + beta**2) * p * r) / (r + beta**2 * p)


def rouge_l(
    predictions: Sequence[Text], references_list: Sequence[Sequence[Text]], beta: float = BETA
) -> float:
    """Corpus ROUGE-L as pycocoevalcap's ``Rouge`` computes it (mean of per-caption F, beta=1.2).

    Args:
        predictions: one candidate per image, pre-tokenized string or token list.
        references_list: the references of each image.

    Returns:
        The mean ROUGE-L F-measure in [0, 1].
    """
    predictions, references_list = paired_inputs(predictions, references_list)
    scores = [rouge_l_sentence(p, refs, beta) for p, refs in zip(predictions, references_list)]
    return sum(scores) / len(scores)
