"""`evaluate` wrapper of mmlora's VQA metrics (official VQA accuracy, exact match, ANLS).

Load it offline by path, e.g. ``mmlora.evaluation.metrics.load_metric("vqa_accuracy")`` or
``evaluate.load("<this directory>")``.  All logic lives in ``mmlora.evaluation.metrics.vqa``;
this file only adapts it to the ``evaluate.Metric`` interface.

Loader constraints (evaluate copies this file into its modules cache and scans its
imports line by line): one absolute import per line, no relative imports, and no
``from evaluate import Metric`` -- evaluate takes the *first* ``EvaluationModule``
subclass found in the module namespace as the metric, which would be ``Metric``.
"""

import datasets
import evaluate
from mmlora.evaluation.metrics.vqa import vqa_scores

_CITATION = """
@inproceedings{antol2015vqa,
  title={{VQA}: Visual Question Answering},
  author={Antol, Stanislaw and Agrawal, Aishwarya and Lu, Jiasen and Mitchell, Margaret and Batra, Dhruv and Zitnick, C. Lawrence and Parikh, Devi},
  booktitle={ICCV},
  year={2015}
}
@inproceedings{biten2019scene,
  title={Scene Text Visual Question Answering},
  author={Biten, Ali Furkan and Tito, Ruben and Mafla, Andres and Gomez, Lluis and Rusinol, Marcal and Valveny, Ernest and Jawahar, C. V. and Karatzas, Dimosthenis},
  booktitle={ICCV},
  year={2019}
}
"""

_DESCRIPTION = """
VQA accuracy as the official VQA evaluation (GT-Vision-Lab/VQA vqaEval.py) computes it:
min(#matching human answers / 3, 1) averaged over the leave-one-out subsets of the
answers, after the official answer normalisation; plus exact match after the same
normalisation and ANLS (ST-VQA / DocVQA). Scores are fractions in [0, 1].
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of predicted answers (strings).
    references: list of lists of human answers (typically 10 per question).
    normalization: "always" (default) or "official"; see mmlora.evaluation.metrics.vqa.vqa_accuracy.
    anls_threshold: ANLS threshold, 0.5 by default.
Returns:
    vqa_accuracy, exact_match, anls (means in [0, 1]) and count.
Examples:
    >>> metric = mmlora.evaluation.metrics.load_metric("vqa_accuracy")
    >>> metric.compute(predictions=["two"], references=[["2"] * 10])["vqa_accuracy"]
    1.0
"""


class VqaAccuracy(evaluate.Metric):
    """Official VQA accuracy, exact match and ANLS over a set of questions."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
            reference_urls=[
                "https://github.com/GT-Vision-Lab/VQA",
                "https://rrc.cvc.uab.es/?ch=11",
            ],
        )

    def _compute(self, predictions, references, normalization="always", anls_threshold=0.5):
        return vqa_scores(
            predictions, references, normalization=normalization, anls_threshold=anls_threshold
        )
