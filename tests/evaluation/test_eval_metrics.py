"""Metrics against their definitions and against the reference implementations.

- VQA accuracy / exact match: a table of hand-worked cases written from the official definition
  (GT-Vision-Lab/VQA vqaEval.py): normalisation, then min(#matching humans / 3, 1) averaged
  over the 10 leave-one-out subsets of the human answers.
- BLEU-1..4, ROUGE-L, CIDEr-D: pycocoevalcap (the COCO caption evaluation, a test-only
  dependency pinned in requirements.lock) on random caption sets of several sizes, same
  tokenised input, agreement to 1e-6. Only its Bleu/Rouge/Cider modules are used: they are
  pure Python and need no Java.
"""

from __future__ import annotations

import random

import pytest

from mmlora.evaluation.metrics import exact_match, score_task, vqa_accuracy
from mmlora.evaluation.metrics.bleu import corpus_bleu
from mmlora.evaluation.metrics.cider import cider_d, cider_d_per_image
from mmlora.evaluation.metrics.rouge import rouge_l

# (prediction, human answers, expected VQA accuracy, expected exact match). With k of 10 humans
# agreeing after normalisation, the 10 leave-one-out subsets give
# acc = (k * min((k - 1) / 3, 1) + (10 - k) * min(k / 3, 1)) / 10: k=1 -> 0.3, 2 -> 0.6, 3 -> 0.9, >=4 -> 1.
VQA_CASES = [
    # punctuation: "yes!" -> "yes" ("!" becomes a space, then whitespace is collapsed)
    ("yes!", ["yes"] * 4 + ["no"] * 6, 1.0, 1.0),
    # a comma between digits deletes every punctuation mark: "1,000" -> "1000"
    ("1,000", ["1000"] + ["100"] * 9, 0.3, 1.0),
    # a period not followed by a digit is removed, "3.5" keeps its period
    ("3.5.", ["3.5", "3.5"] + ["3"] * 8, 0.6, 1.0),
    # articles: "the cat" -> "cat"; 3 humans said "a cat"
    ("the cat", ["a cat", "cat", "an cat"] + ["dog"] * 7, 0.9, 1.0),
    # number words: "Two" -> "2"
    ("Two", ["2", "two", "2", "two", "3", "3", "3", "3", "3", "3"], 1.0, 1.0),
    # contractions: "dont" -> "don't", "isnt" -> "isn't"
    ("dont know", ["don't know", "dont know"] + ["no"] * 8, 0.6, 1.0),
    ("isnt", ["isn't"] + ["is"] * 9, 0.3, 1.0),
    # case and surrounding whitespace
    ("  Red\n", ["red"] * 3 + ["blue"] * 7, 0.9, 1.0),
    # no human gave the answer
    ("purple", ["red"] * 10, 0.0, 0.0),
    # a colon is not in the official punctuation list: "12:30" stays, "1230" does not match
    ("12:30", ["1230"] * 10, 0.0, 0.0),
    # hyphens become spaces: "t-shirt" -> "t shirt"
    ("t-shirt", ["t shirt"] * 2 + ["shirt"] * 8, 0.6, 1.0),
]


@pytest.mark.parametrize(("prediction", "answers", "accuracy", "match"), VQA_CASES,
                         ids=[c[0].strip() or "blank" for c in VQA_CASES])
def test_vqa_accuracy_and_exact_match_hand_worked(prediction, answers, accuracy, match):
    assert len(answers) == 10
    assert vqa_accuracy(prediction, answers) == pytest.approx(accuracy, abs=1e-12)
    assert exact_match(prediction, answers) == match


def test_vqa_accuracy_with_fewer_answers():
    # One reference: exact match after normalisation; more: the same leave-one-out rule.
    assert vqa_accuracy("Two.", ["2"]) == 1.0
    assert vqa_accuracy("cat", ["cat"] * 5) == pytest.approx(1.0)  # 4 others match in each subset
    assert vqa_accuracy("cat", ["cat", "dog", "dog"]) == pytest.approx((0 + 1 / 3 + 1 / 3) / 3)


def test_score_task_per_sample_scores_and_correctness():
    vqa = score_task("vqa", ["Two", "cat", "yes"], [["2"] * 10, ["dog"] * 10, ["yes", "no", "no"]])
    assert vqa.per_sample == pytest.approx([1.0, 0.0, (0 + 1 / 3 + 1 / 3) / 3])
    assert vqa.correct == [True, False, True]
    assert vqa.metrics["vqa_accuracy"] == pytest.approx(sum(vqa.per_sample) / 3)
    caption = score_task("caption", ["A dog.", "a red bike", "x"],
                         [["a dog"], ["a man on a red bike"], ["a cat", "two cats"]])
    assert caption.correct == [True, False, False]  # "A dog." tokenises to "a dog"
    assert caption.metrics["cider_d"] == pytest.approx(sum(caption.per_sample) / 3)
    with pytest.raises(ValueError, match="task"):
        score_task("detection", ["a"], [["a"]])


# --------------------------------------------------------------------- pycocoevalcap

WORDS = ("a man woman dog cat on the of with in red blue riding sitting table street two "
         "small large grass and near holding white plate food").split()


def random_corpus(rng: random.Random, n_images: int) -> tuple[dict, dict]:
    """pycocoevalcap-style {image_id: [captions]} for references and one candidate each:
    captions of 1..14 tokens from a small vocabulary (so n-grams recur across images), 1..5
    references per image, candidates partly copied from a reference to give real overlaps."""
    gts, res = {}, {}
    for image_id in range(n_images):
        refs = [" ".join(rng.choices(WORDS, k=rng.randint(1, 14))) for _ in range(rng.randint(1, 5))]
        candidate = rng.choice(refs).split()
        if rng.random() < 0.7:  # perturb: drop, swap or add words
            for _ in range(rng.randint(1, 4)):
                position = rng.randrange(len(candidate) + 1)
                candidate.insert(position, rng.choice(WORDS))
                if len(candidate) > 1 and rng.random() < 0.5:
                    del candidate[rng.randrange(len(candidate))]
        gts[image_id], res[image_id] = refs, [" ".join(candidate)]
    return gts, res


@pytest.mark.parametrize("n_images", [1, 2, 3, 7, 25, 120])
def test_caption_metrics_agree_with_pycocoevalcap(n_images):
    pytest.importorskip("pycocoevalcap", reason="test-only dependency: pip install -r requirements.lock")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gts, res = random_corpus(random.Random(1000 + n_images), n_images)
    ids = sorted(gts)
    predictions, references = [res[i][0] for i in ids], [gts[i] for i in ids]

    ref_bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    ours = corpus_bleu(predictions, references)
    assert [ours[f"bleu_{n}"] for n in range(1, 5)] == pytest.approx(ref_bleu, abs=1e-6)

    ref_rouge, _ = Rouge().compute_score(gts, res)
    assert rouge_l(predictions, references) == pytest.approx(float(ref_rouge), abs=1e-6)

    ref_cider, ref_per_image = Cider().compute_score(gts, res)
    assert cider_d(predictions, references) == pytest.approx(float(ref_cider), abs=1e-6)
    assert cider_d_per_image(predictions, references) == pytest.approx(list(ref_per_image), abs=1e-6)


def test_random_corpora_are_not_degenerate():
    # The comparison above must exercise partial matches, not only 0 or perfect scores.
    gts, res = random_corpus(random.Random(1025), 25)
    ids = sorted(gts)
    predictions, references = [res[i][0] for i in ids], [gts[i] for i in ids]
    scores = corpus_bleu(predictions, references)
    assert 0.2 < scores["bleu_1"] < 1.0 and 0.01 < scores["bleu_4"] < 1.0
    assert 0.5 < cider_d(predictions, references) < 10.0


CAPTIONS_WITH_PUNCTUATION = [
    "A man's dog doesn't run. \"Hello,\" she said!", "Two dogs (brown) are playing -- in the park...",
    "It's 3.5 miles; cost $4.50 & 10% off", "The U.S. team's car isn't red/blue.", "a man in a t-shirt - ok?!",
    "There are 1,000 birds at 12:30.", "A giraffe standing next to a tree; it is tall.",
    "Kids' toys on the floor, and a cat's bed.", "a red-and-white bus at the stop",
    "A woman holding an umbrella (black) in the rain.", "A street sign that says \"STOP\" near a building.",
]


def test_coco_tokenize_matches_the_java_ptb_tokenizer():
    """pycocoevalcap's own tokenizer (Stanford CoreNLP, Java) on captions with punctuation gives
    the tokens mmlora's pure-Python tokenizer gives, so BLEU/ROUGE-L/CIDEr-D computed from raw
    captions match the full COCO pipeline too."""
    import shutil

    pytest.importorskip("pycocoevalcap", reason="test-only dependency: pip install -r requirements.lock")
    if shutil.which("java") is None:
        pytest.skip("no java: the reference tokenizer is a Java program")
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    from mmlora.evaluation.metrics import coco_tokenize

    tokenized = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(CAPTIONS_WITH_PUNCTUATION)})
    for i, caption in enumerate(CAPTIONS_WITH_PUNCTUATION):
        assert " ".join(coco_tokenize(caption)) == tokenized[i][0], caption
