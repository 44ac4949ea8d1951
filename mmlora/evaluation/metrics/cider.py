"""CIDEr-D exactly as the COCO caption evaluation computes it.

CIDEr / CIDEr-D: Vedantam, Zitnick and Parikh, "CIDEr: Consensus-based Image
Description Evaluation", CVPR 2015.  The score reported as "CIDEr" by the COCO
caption evaluation (pycocoevalcap ``cider/cider_scorer.py``, tylin/coco-caption)
is the CIDEr-D variant, identical to vrama91/cider's ``CiderD`` with
``df="corpus"``; reproduced here:

* n-grams for n = 1..4 of whitespace tokens;
* document frequency ``df(g)`` = number of *images* whose reference set contains
  the n-gram ``g`` -- computed from the references being evaluated, so CIDEr-D is
  a **corpus** metric: its value for an image depends on the whole corpus;
* weights ``tf(g) * (log(N_images) - log(max(1, df(g))))`` with raw counts as tf;
* per n, the candidate/reference similarity is
  ``sum_g min(w_c(g), w_r(g)) * w_r(g) / (|w_c| |w_r|)`` (the "-D" clipping;
  left unnormalised when a norm is 0) times the Gaussian length penalty
  ``exp(-(l_c - l_r)^2 / (2 sigma^2))`` with ``sigma = 6``, where the "length" is
  the number of *bigrams* (as in the original code: ``length`` is accumulated for
  ``n == 1`` with a 0-based n, i.e. tokens - 1);
* per image: mean over n of the sum over references, divided by the number of
  references, times 10; the corpus score is the mean over images.

Pitfall: on a corpus of one image every n-gram has ``df = N = 1``, all weights
are 0 and the score is 0 whatever the caption.  Score whole evaluation sets.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from mmlora.evaluation.metrics.bleu import Text, as_tokens, ngram_counts
from mmlora.evaluation.metrics.inputs import paired_inputs

__all__ = ["cider_d", "cider_d_per_image"]

Ngram = tuple[str, ...]


def _tfidf(
    counts: Counter[Ngram], doc_freq: Counter[Ngram], log_num_images: float, n: int
) -> tuple[list[dict[Ngram, float]], list[float], int]:
    """Per-order tf-idf vectors, their norms and the bigram length (``counts2vec``)."""
    vec: list[dict[Ngram, float]] = [{} for _ in range(n)]
    squared = [0.0] * n
    length = 0
    for ngram, tf in counts.items():
        order = len(ngram) - 1
        # An n-gram absent from every reference set gets df 1 (idf = log N).
        weight = float(tf) * (log_num_images - math.log(max(1.0, float(doc_freq[ngram]))))
        vec[order][ngram] = weight
        squared[order] += weight * weight
        if order == 1:
            length += tf
    return vec, [math.sqrt(s) for s in squared], length


def cider_d_per_image(
    predictions: Sequence[Text],
    references_list: Sequence[Sequence[Text]],
    n: int = 4,
    sigma: float = 6.0,
) -> list[float]:
    """CIDEr-D of every image (pycocoevalcap ``compute_cider``); see :func:`cider_d`."""
    predictions, references_list = paired_inputs(predictions, references_list)
    cand_counts = [ngram_counts(as_tokens(p), n) for p in predictions]
    ref_counts = []
    for refs in references_list:
        if isinstance(refs, str) or not refs:
            raise ValueError("each element of references_list must be a non-empty list")
        ref_counts.append([ngram_counts(as_tokens(r), n) for r in refs])

    doc_freq: Counter[Ngram] = Counter()
    for refs in ref_counts:
        doc_freq.update({ngram for ref in refs for ngram in ref})
    log_num_images = math.log(float(len(ref_counts)))

    scores = []
    for cand, refs in zip(cand_counts, ref_counts):
        vec, norm, length = _tfidf(cand, doc_freq, log_num_images, n)
        per_order = [0.0] * n
        for ref in refs:
            vec_r, norm_r, length_r = _tfidf(ref, doc_freq, log_num_images, n)
            penalty = math.exp(-float(length - length_r) ** 2 / (2 * sigma**2))
            for k in range(n):
                val = 0.0
                for ngram, weight in vec[k].items():
                    ref_weight = vec_r[k].get(ngram, 0.0)
                    val += min(weight, ref_weight) * ref_weight
                if norm[k] != 0 and norm_r[k] != 0:
                    val /= norm[k] * norm_r[k]
                per_order[k] += val * penalty
        scores.append(sum(per_order) / n / len(refs) * 10.0)
    return scores


def cider_d(
    predictions: Sequence[Text],
    references_list: Sequence[Sequence[Text]],
    n: int = 4,
    sigma: float = 6.0,
) -> float:
    """Corpus CIDEr-D as the COCO caption evaluation ("CIDEr") computes it.

    Args:
        predictions: one candidate per image, pre-tokenized string or token list.
        references_list: the references of each image (document frequencies are
            computed from these, so pass the whole evaluation set at once).
        n: highest n-gram order (4).
        sigma: standard deviation of the length penalty (6).

    Returns:
        The mean CIDEr-D over images (typically 0..~3; x10 scaled as in the
        original, not a fraction).  A one-image corpus always scores 0.
    """
    scores = cider_d_per_image(predictions, references_list, n, sigma)
    return sum(scores) / len(scores)
