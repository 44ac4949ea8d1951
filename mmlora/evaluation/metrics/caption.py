"""Captioning metrics of the COCO caption evaluation (pycocoevalcap), in pure Python.

:func:`caption_scores` reproduces what ``COCOEvalCap.evaluate()`` (tylin/coco-caption,
``pycocoevalcap/eval.py``) reports for BLEU-1..4, ROUGE-L and CIDEr(-D): every
candidate and reference caption is tokenized (:func:`coco_tokenize`, a pure-Python
stand-in for the Java PTB tokenizer), then the corpus metrics are computed by
:func:`corpus_bleu`, :func:`rouge_l` and :func:`cider_d`.

Left out: **METEOR** (Banerjee and Lavie, 2005) and **SPICE** (Anderson et al.,
2016).  The reference implementations are Java programs (``meteor-1.5.jar`` with
its paraphrase tables, ``spice-1.0.jar`` with the Stanford scene-graph parser);
a Python re-implementation would not give the same numbers, so none is offered.

Scale: BLEU and ROUGE-L are fractions in [0, 1]; CIDEr-D keeps the original x10
scale (COCO papers print it x100, e.g. "CIDEr 120.3" means 1.203 here).
"""

from __future__ import annotations

from collections.abc import Sequence

from mmlora.evaluation.metrics.bleu import corpus_bleu
from mmlora.evaluation.metrics.cider import cider_d
from mmlora.evaluation.metrics.inputs import paired_inputs
from mmlora.evaluation.metrics.rouge import rouge_l
from mmlora.evaluation.metrics.tokenize import coco_tokenize

__all__ = ["caption_scores", "cider_d", "coco_tokenize", "corpus_bleu", "rouge_l"]


def caption_scores(
    predictions: Sequence[str], references_list: Sequence[Sequence[str]]
) -> dict[str, float]:
    """COCO caption metrics of a corpus of raw (untokenized) captions.

    Args:
        predictions: one generated caption per image.
        references_list: the reference captions of each image (any number >= 1).

    Returns:
        ``{"bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider_d"}``.

    Raises:
        ValueError: on an empty corpus, mismatched lengths or an image without
            references.
    """
    predictions, references_list = paired_inputs(predictions, references_list)
    candidates = [coco_tokenize(p) for p in predictions]
    references = []
    for i, refs in enumerate(references_list):
        if isinstance(refs, str) or not refs:
            raise ValueError(f"item {i}: references must be a non-empty list of captions")
        references.append([coco_tokenize(r) for r in refs])
    scores: dict[str, float] = dict(corpus_bleu(candidates, references, max_n=4))
    scores["rouge_l"] = rouge_l(candidates, references)
    scores["cider_d"] = cider_d(candidates, references)
    return scores
