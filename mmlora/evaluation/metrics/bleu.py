"""Corpus BLEU-1..4 exactly as the COCO caption evaluation computes it.

BLEU: Papineni et al., "BLEU: a Method for Automatic Evaluation of Machine
Translation", ACL 2002.  The COCO variant is pycocoevalcap's ``Bleu`` /
``BleuScorer`` (tylin/coco-caption ``bleu/bleu_scorer.py``, after David Chiang's
scorer), called with ``option='closest'``.  Its particulars, all reproduced:

* clipped n-gram matches and candidate n-gram counts are summed over the whole
  corpus (corpus-level precisions, not a mean of sentence scores);
* the effective reference length of a candidate is the length of the reference
  closest to it, ties going to the *shorter* reference; the lengths are summed
  over the corpus;
* ``BLEU-N = (prod_{k<=N} (correct_k + 1e-15) / (guess_k + 1e-9)) ** (1/N)``
  -- the ``tiny``/``small`` constants keep a zero count from dividing by zero
  (and make a zero match count give ~0 rather than an error);
* brevity penalty ``exp(1 - 1/ratio)`` with
  ``ratio = (testlen + 1e-15) / (reflen + 1e-9)``, applied only if ``ratio < 1``.

Input strings are split on whitespace, as pycocoevalcap does after its
tokenizer; run :func:`mmlora.evaluation.metrics.tokenize.coco_tokenize` first (or use
:func:`mmlora.evaluation.metrics.caption.caption_scores`) to reproduce COCO numbers.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from mmlora.evaluation.metrics.inputs import paired_inputs

__all__ = ["BleuStats", "bleu_stats", "corpus_bleu", "ngram_counts"]

# pycocoevalcap's smoothing constants (bleu_scorer.py ``compute_score``).
_TINY = 1e-15
_SMALL = 1e-9

Text = str | Sequence[str]


def as_tokens(text: Text) -> list[str]:
    """A whitespace-split string, or a copy of an already tokenized sequence."""
    return text.split() if isinstance(text, str) else list(text)


def ngram_counts(tokens: Sequence[str], max_n: int) -> Counter[tuple[str, ...]]:
    """Counts of every n-gram of ``tokens`` with 1 <= n <= max_n (pycocoevalcap ``precook``)."""
    counts: Counter[tuple[str, ...]] = Counter()
    for n in range(1, max_n + 1):
        for i in range(len(tokens) - n + 1):
            counts[tuple(tokens[i : i + n])] += 1
    return counts


@dataclass
class BleuStats:
    """Sufficient statistics of corpus BLEU (what pycocoevalcap prints with verbose=1).

    ``correct[k]`` / ``guess[k]``: clipped matching and total candidate
    (k+1)-grams over the corpus; ``testlen`` / ``reflen``: total candidate length
    and total effective (closest) reference length.
    """

    max_n: int = 4
    correct: list[int] = field(default_factory=list)
    guess: list[int] = field(default_factory=list)
    testlen: int = 0
    reflen: int = 0

    def __post_init__(self) -> None:
        self.correct = self.correct or [0] * self.max_n
        self.guess = self.guess or [0] * self.max_n

    def add(self, candidate: Sequence[str], references: Sequence[Sequence[str]]) -> None:
        """Accumulate one candidate against its references (``cook_refs``/``cook_test``)."""
        if not references:
            raise ValueError("every candidate needs at least one reference")
        max_ref_counts: dict[tuple[str, ...], int] = {}
        for ref in references:
            for ngram, count in ngram_counts(ref, self.max_n).items():
                if count > max_ref_counts.get(ngram, 0):
                    max_ref_counts[ngram] = count
        testlen = len(candidate)
        # "closest": minimise |ref_len - testlen|; on a tie min() over the tuples
        # picks the shorter reference, as pycocoevalcap does.
        self.reflen += min((abs(len(r) - testlen), len(r)) for r in references)[1]
        self.testlen += testlen
        for ngram, count in ngram_counts(candidate, self.max_n).items():
            self.correct[len(ngram) - 1] += min(max_ref_counts.get(ngram, 0), count)
        for k in range(self.max_n):
            self.guess[k] += max(0, testlen - k)

    def scores(self) -> list[float]:
        """BLEU-1..max_n from the accumulated statistics (pycocoevalcap ``compute_score``)."""
        ratio = (self.testlen + _TINY) / (self.reflen + _SMALL)
        brevity = math.exp(1.0 - 1.0 / ratio) if ratio < 1.0 else 1.0
        result = []
        product = 1.0
        for n in range(1, self.max_n + 1):
            product *= (self.correct[n - 1] + _TINY) / (self.guess[n - 1] + _SMALL)
            result.append(product ** (1.0 / n) * brevity)
        return result


def bleu_stats(
    predictions: Sequence[Text], references_list: Sequence[Sequence[Text]], max_n: int = 4
) -> BleuStats:
    """Accumulate :class:`BleuStats` over a corpus (see :func:`corpus_bleu`)."""
    predictions, references_list = paired_inputs(predictions, references_list)
    if max_n < 1:
        raise ValueError(f"max_n must be >= 1, got {max_n}")
    stats = BleuStats(max_n=max_n)
    for pred, refs in zip(predictions, references_list):
        if isinstance(refs, str):
            raise TypeError("each element of references_list must be a list of references")
        stats.add(as_tokens(pred), [as_tokens(r) for r in refs])
    return stats


def corpus_bleu(
    predictions: Sequence[Text], references_list: Sequence[Sequence[Text]], max_n: int = 4
) -> dict[str, float]:
    """Corpus BLEU-1..max_n as pycocoevalcap's ``Bleu(4)`` computes it.

    Args:
        predictions: one candidate per image, a pre-tokenized string (split on
            whitespace) or a token list.
        references_list: the references of each image, same format.
        max_n: highest n-gram order.

    Returns:
        ``{"bleu_1": ..., ..., f"bleu_{max_n}": ...}`` in [0, 1].
    """
    scores = bleu_stats(predictions, references_list, max_n).scores()
    return {f"bleu_{n}": score for n, score in enumerate(scores, start=1)}
