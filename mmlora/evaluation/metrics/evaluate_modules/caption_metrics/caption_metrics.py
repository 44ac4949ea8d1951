"""`evaluate` wrapper of mmlora's COCO caption metrics (BLEU-1..4, ROUGE-L, CIDEr-D).

Load it offline by path, e.g. ``mmlora.evaluation.metrics.load_metric("caption_metrics")`` or
``evaluate.load("<this directory>")``.  All logic lives in ``mmlora.evaluation.metrics.caption``;
this file only adapts it to the ``evaluate.Metric`` interface.

Loader constraints (evaluate copies this file into its modules cache and scans its
imports line by line): one absolute import per line, no relative imports, and no
``from evaluate import Metric`` -- evaluate takes the *first* ``EvaluationModule``
subclass found in the module namespace as the metric, which would be ``Metric``.
"""

import datasets
import evaluate
from mmlora.evaluation.metrics.caption import caption_scores

_CITATION = """
@inproceedings{papineni2002bleu,
  title={{BLEU}: a Method for Automatic Evaluation of Machine Translation},
  author={Papineni, Kishore and Roukos, Salim and Ward, Todd and Zhu, Wei-Jing},
  booktitle={ACL},
  year={2002}
}
@inproceedings{lin2004rouge,
  title={{ROUGE}: A Package for Automatic Evaluation of Summaries},
  author={Lin, Chin-Yew},
  booktitle={Text Summarization Branches Out},
  year={2004}
}
@inproceedings{vedantam2015cider,
  title={{CIDEr}: Consensus-based Image Description Evaluation},
  author={Vedantam, Ramakrishna and Zitnick, C. Lawrence and Parikh, Devi},
  booktitle={CVPR},
  year={2015}
}
@article{chen2015microsoft,
  title={Microsoft {COCO} Captions: Data Collection and Evaluation Server},
  author={Chen, Xinlei and Fang, Hao and Lin, Tsung-Yi and Vedantam, Ramakrishna and Gupta, Saurabh and Dollar, Piotr and Zitnick, C. Lawrence},
  journal={arXiv:1504.00325},
  year={2015}
}
"""

_DESCRIPTION = """
COCO caption evaluation metrics computed as pycocoevalcap computes them: PTB-style
tokenisation with punctuation removal, corpus BLEU-1..4 (closest reference length),
ROUGE-L (beta 1.2) and CIDEr-D (sigma 6, document frequencies from the references
given). METEOR and SPICE (Java programs) are not included. CIDEr-D is a corpus
metric: score the whole evaluation set in one call.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated captions (strings, untokenized).
    references: list of lists of reference captions.
Returns:
    bleu_1, bleu_2, bleu_3, bleu_4, rouge_l (in [0, 1]) and cider_d (x10 scale).
Examples:
    >>> metric = mmlora.evaluation.metrics.load_metric("caption_metrics")
    >>> round(metric.compute(predictions=["a dog"], references=[["a dog"]])["bleu_1"], 6)
    1.0
"""


class CaptionMetrics(evaluate.Metric):
    """COCO caption metrics (BLEU-1..4, ROUGE-L, CIDEr-D) over a corpus."""

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
            reference_urls=["https://github.com/tylin/coco-caption"],
        )

    def _compute(self, predictions, references):
        return caption_scores(predictions, references)
