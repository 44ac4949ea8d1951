"""Tests of mmlora.evaluation.metrics against hand-computed values and reference-implementation outputs.

Golden values marked "pycocoevalcap" were produced by running pycocoevalcap 1.2
(Bleu(4), Rouge(), Cider(), and for caption_scores its Java PTBTokenizer) on the
same inputs; the COCO demo statistics come from tylin/coco-caption issue #3.
"""

from __future__ import annotations

import json
import math

import pytest

from mmlora.evaluation.metrics.bleu import BleuStats, corpus_bleu
from mmlora.evaluation.metrics.caption import caption_scores
from mmlora.evaluation.metrics.cider import cider_d, cider_d_per_image
from mmlora.evaluation.metrics.rouge import rouge_l
from mmlora.evaluation.metrics.score_file import PredictionFileError, score_predictions_file
from mmlora.evaluation.metrics.tokenize import coco_tokenize
from mmlora.evaluation.metrics.vqa import anls, exact_match, levenshtein, vqa_accuracy, vqa_scores
from mmlora.evaluation.metrics.vqa_normalize import CONTRACTIONS, normalize_vqa_answer

# --------------------------------------------------------------------------- VQA


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Two dogs.", "2 dogs"),  # period stripped, number word mapped
        ("the cat", "cat"),  # article removed
        ("dont", "don't"),  # contractions table
        ("whats up", "what's up"),
        ("yes!", "yes"),  # "!" not next to a space -> space, then split/join
        ("1,000", "1000"),  # digit,digit anywhere -> punctuation deleted, not spaced
        ("3.5", "3.5"),  # a period before a digit stays
        ("12:30", "12:30"),  # ':' is not in the official punctuation list
        ("red,white", "red white"),  # ',' replaced by a space ...
        ("red, white", "red white"),  # ... or deleted when next to a space
        ("  Yes \n", "yes"),
        ("None", "0"),
        ("Ten.", "10"),
        ("An apple\tA day", "apple day"),
        ("don't", "don't"),  # apostrophes are kept
    ],
)
def test_normalize_vqa_answer(raw, expected):
    assert normalize_vqa_answer(raw) == expected


def test_contraction_table_is_the_official_one():
    assert len(CONTRACTIONS) == 120
    # Quirks of the official table kept on purpose.
    assert CONTRACTIONS["somebody'd"] == "somebodyd"
    assert CONTRACTIONS["Im"] == "I'm"  # unreachable (lookup is after lower-casing)
    assert normalize_vqa_answer("Im") == "im"


@pytest.mark.parametrize(
    ("k", "expected"),
    # k of 10 humans gave the answer. Leave-one-out over the 10 answers:
    # k subsets drop a matching answer (k-1 matches left), 10-k keep all k.
    # acc = (k * min((k-1)/3, 1) + (10-k) * min(k/3, 1)) / 10
    [
        (0, 0.0),
        (1, (1 * 0 + 9 * (1 / 3)) / 10),  # 0.3
        (2, (2 * (1 / 3) + 8 * (2 / 3)) / 10),  # (2/3 + 16/3) / 10 = 0.6
        (3, (3 * (2 / 3) + 7 * 1) / 10),  # (2 + 7) / 10 = 0.9
        (4, 1.0),  # 4 * 1 + 6 * 1
        (10, 1.0),
    ],
)
def test_vqa_accuracy_ten_answers(k, expected):
    answers = ["cat"] * k + ["dog"] * (10 - k)
    assert vqa_accuracy("cat", answers) == pytest.approx(expected, abs=1e-12)


def test_vqa_accuracy_two_of_ten_is_point_six():
    answers = ["2", "two", "3", "3", "3", "3", "4", "4", "4", "4"]  # "two" -> "2": k = 2
    assert vqa_accuracy("Two.", answers) == pytest.approx(0.6)


def test_vqa_accuracy_fewer_references():
    # One reference: exact match after normalisation (official code would give 0).
    assert vqa_accuracy("Two", ["2"]) == 1.0
    assert vqa_accuracy("three", ["2"]) == 0.0
    # n >= 2: the official leave-one-out with threshold 3, as the script computes it.
    assert vqa_accuracy("cat", ["cat", "cat"]) == pytest.approx(1 / 3)
    assert vqa_accuracy("cat", ["cat", "cat", "cat"]) == pytest.approx(2 / 3)
    assert vqa_accuracy("cat", ["cat"] * 4) == pytest.approx(1.0)


def test_vqa_accuracy_official_normalisation_only_when_answers_disagree():
    # All ten humans agree -> the official script compares raw strings.
    assert vqa_accuracy("Yes.", ["yes"] * 10, normalization="official") == 0.0
    assert vqa_accuracy("Yes.", ["yes"] * 10) == 1.0
    # Disagreeing answers -> both sides normalised, both modes agree (k = 3 -> 0.9).
    answers = ["2", "two", "2"] + ["3"] * 7
    assert vqa_accuracy("Two.", answers, normalization="official") == pytest.approx(0.9)
    assert vqa_accuracy("Two.", answers) == pytest.approx(0.9)


def test_vqa_accuracy_rejects_bad_input():
    with pytest.raises(ValueError):
        vqa_accuracy("a", [])
    with pytest.raises(TypeError):
        vqa_accuracy("a", "a")
    with pytest.raises(ValueError):
        vqa_accuracy("a", ["a"], normalization="sloppy")


def test_exact_match():
    assert exact_match("Two.", ["3", "2"]) == 1.0
    assert exact_match("the cat", ["Cat!"]) == 1.0
    assert exact_match("cat", ["dog"]) == 0.0


def test_levenshtein():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3
    assert levenshtein("abc", "abc") == 0


def test_anls():
    assert anls("hello", ["hello"]) == 1.0
    assert anls(" HeLLo ", ["hello"]) == 1.0  # lower-cased and stripped
    assert anls("helo", ["hello"]) == pytest.approx(1 - 1 / 5)  # NL = 1/5
    assert anls("helo", ["xyz", "hello"]) == pytest.approx(0.8)  # max over references
    assert anls("abcx", ["abcd"]) == pytest.approx(0.75)  # NL = 1/4
    assert anls("abxy", ["abcd"]) == 0.0  # NL = 2/4 = 0.5 is not < 0.5
    assert anls("abxy", ["abcd"], threshold=0.6) == pytest.approx(0.5)
    assert anls("", [""]) == 1.0


def test_vqa_scores_are_fractions():
    scores = vqa_scores(["2", "cat", "helo"], [["two"] * 10, ["dog"] * 10, ["hello"]])
    assert scores["count"] == 3
    assert scores["vqa_accuracy"] == pytest.approx(1 / 3)
    assert scores["exact_match"] == pytest.approx(1 / 3)
    # ANLS compares raw lower-cased strings: "2" vs "two" is 0 (no VQA normalisation).
    assert scores["anls"] == pytest.approx((0.0 + 0.0 + 0.8) / 3)
    with pytest.raises(ValueError):
        vqa_scores(["a"], [])
    with pytest.raises(ValueError):
        vqa_scores([], [])


# ------------------------------------------------------------------ tokenisation


@pytest.mark.parametrize(
    ("raw", "expected"),
    # Expected = Stanford CoreNLP 3.4.1 PTBTokenizer -preserveLines -lowerCase
    # output with pycocoevalcap's PUNCTUATIONS removed.
    [
        ('A man\'s dog doesn\'t run. "Hello," she said!',
         "a man 's dog does n't run hello she said"),
        ("Two dogs (brown) are playing -- in the park...",
         "two dogs -lrb- brown -rrb- are playing in the park"),
        ("It's 3.5 miles; cost $4.50 & 10% off", "it 's 3.5 miles cost $ 4.50 & 10 % off"),
        ("The U.S. team's car isn't red/blue.", "the u.s. team 's car is n't red/blue"),
        ("I can't won't, cannot gonna wanna", "i ca n't wo n't can not gon na wan na"),
        ("There are 1,000 birds at 12:30.", "there are 1,000 birds at 12:30"),
        ("a man in a t-shirt - ok?!", "a man in a t-shirt ok ?!"),
        ("don\u2019t \u201cquote\u201d", "do n't quote"),
        ("Mr. Smith on Main St. and the dogs' bone.", "mr. smith on main st. and the dogs bone"),
        ("", ""),
    ],
)
def test_coco_tokenize_matches_corenlp(raw, expected):
    assert " ".join(coco_tokenize(raw)) == expected


# -------------------------------------------------------------------------- BLEU


def test_bleu_identical_is_one():
    scores = corpus_bleu(["a man riding a horse"], [["a man riding a horse"]])
    for n in range(1, 5):
        assert scores[f"bleu_{n}"] == pytest.approx(1.0, abs=1e-8)


def test_bleu_hand_example():
    # cand "the cat sat on the mat", ref "the cat is on the mat" (both 6 tokens)
    # 1-grams: the x2, cat, on, mat match; sat does not        -> 5/6
    # 2-grams: the cat, on the, the mat of 5                   -> 3/5
    # 3-grams: on the mat of 4                                 -> 1/4
    # 4-grams: none of 3                                        -> 0 (tiny/small)
    # equal lengths -> no brevity penalty
    s = corpus_bleu(["the cat sat on the mat"], [["the cat is on the mat"]])
    assert s["bleu_1"] == pytest.approx(5 / 6, rel=1e-8)
    assert s["bleu_2"] == pytest.approx(math.sqrt(5 / 6 * 3 / 5), rel=1e-8)  # sqrt(0.5)
    assert s["bleu_3"] == pytest.approx((5 / 6 * 3 / 5 * 1 / 4) ** (1 / 3), rel=1e-8)  # 0.5
    assert s["bleu_4"] == pytest.approx(8.034284186199331e-05, rel=1e-12)  # pycocoevalcap


def test_bleu_brevity_penalty_uses_closest_reference():
    # cand has 5 tokens, refs 6 and 8 -> closest 6 -> BP = exp(1 - 6/5) = exp(-0.2)
    # 1- and 2-gram precisions are 1 (cat on / on the from ref 2), 3-grams 2/3.
    s = corpus_bleu(
        ["the cat on the mat"], [["the cat is on the mat", "there is a cat on the mat mat"]]
    )
    assert s["bleu_1"] == pytest.approx(math.exp(-0.2), rel=1e-8)
    assert s["bleu_2"] == pytest.approx(math.exp(-0.2), rel=1e-8)
    assert s["bleu_3"] == pytest.approx((2 / 3) ** (1 / 3) * math.exp(-0.2), rel=1e-8)
    # pycocoevalcap values
    assert [s[f"bleu_{n}"] for n in range(1, 5)] == pytest.approx(
        [0.8187307527504899, 0.8187307527300217, 0.7152271914379645, 0.6221008428050426], rel=1e-12
    )


def test_bleu_closest_tie_goes_to_shorter_reference():
    # 4 tokens, refs of 3 and 5 tokens: tie -> 3 -> ratio > 1 -> no penalty.
    # (Choosing 5 would give exp(1 - 5/4) = 0.78.)
    s = corpus_bleu(["a b c d"], [["a b c", "a b c d e"]])
    assert s["bleu_1"] == pytest.approx(1.0, abs=1e-8)


def test_bleu_aggregation_reproduces_coco_demo():
    # Statistics and scores printed by the COCO caption demo (tylin/coco-caption#3).
    stats = BleuStats(
        correct=[5732, 2510, 1043, 423], guess=[9893, 8893, 7893, 6893], testlen=9893, reflen=9855
    )
    assert [round(x, 3) for x in stats.scores()] == [0.579, 0.404, 0.279, 0.191]


def test_bleu_is_corpus_level_not_mean_of_sentences():
    preds, refs = ["a b", "c d e f"], [["a b"], ["c x y z"]]
    # 1-gram: (2 + 1) / (2 + 4) = 0.5 for the corpus; the sentence mean would be 0.625.
    assert corpus_bleu(preds, refs)["bleu_1"] == pytest.approx(0.5, rel=1e-8)


# ----------------------------------------------------------------------- ROUGE-L


def test_rouge_l_hand_example():
    # LCS = 3, P = 3/3 = 1, R = 3/6 = 0.5, beta = 1.2:
    # F = (1 + 1.44) * 1 * 0.5 / (0.5 + 1.44 * 1) = 1.22 / 1.94
    assert rouge_l(["the cat sat"], [["the cat sat on the mat"]]) == pytest.approx(1.22 / 1.94)


def test_rouge_l_takes_max_precision_and_recall_separately():
    # ref 1: P = 2/4, R = 2/2; ref 2: P = 4/4, R = 4/8 -> max P = 1, max R = 1 -> F = 1
    assert rouge_l(["a b c d"], [["a b", "a b c d e f g h"]]) == pytest.approx(1.0)
    assert rouge_l(["x"], [["a b"]]) == 0.0
    assert rouge_l(["a b", "x"], [["a b"], ["a b"]]) == pytest.approx(0.5)  # corpus mean


# ----------------------------------------------------------------------- CIDEr-D


def test_cider_d_hand_example():
    # N = 2 images -> idf of an n-gram seen in one image's refs = log 2 - log 1.
    # Image 0: cand == ref "a b": cosine 1 for 1-grams and 2-grams, no 3/4-grams,
    #          equal bigram lengths -> (1 + 1 + 0 + 0) / 4 * 10 = 5.
    # Image 1: "x y" shares nothing with "c d" -> 0.  Corpus mean 2.5.
    assert cider_d_per_image(["a b", "x y"], [["a b"], ["c d"]]) == pytest.approx([5.0, 0.0])
    assert cider_d(["a b", "x y"], [["a b"], ["c d"]]) == pytest.approx(2.5)


def test_cider_d_single_image_is_zero():
    # With one image every n-gram has df = N = 1 -> all tf-idf weights are 0.
    assert cider_d(["a dog on a couch"], [["a dog on a couch"]]) == 0.0


def test_cider_d_prefers_the_matching_candidate():
    refs = [
        ["a dog runs on the beach", "a brown dog running along the sand"],
        ["a plate of pasta with sauce", "pasta and tomato sauce on a plate"],
        ["a man riding a red bike", "a cyclist rides a red bicycle down the road"],
    ]
    good = ["a dog running on the beach", "a plate of pasta with sauce", "a man riding a red bike"]
    bad = ["a plate of pasta with sauce", "a man riding a red bike", "a dog running on the beach"]
    good_scores, bad_scores = cider_d_per_image(good, refs), cider_d_per_image(bad, refs)
    assert all(g > b for g, b in zip(good_scores, bad_scores))
    assert cider_d(good, refs) > 1.0 > cider_d(bad, refs)


# -------------------------------------------------------------- caption_scores

_CAPTION_REFS = [
    ["A man riding a wave on top of a surfboard.",
     "A surfer rides a large wave in the ocean.",
     "A person on a surfboard riding a wave!"],
    ["Two dogs are playing with a frisbee in the park.",
     "Two brown dogs play in the grass, chasing a frisbee.",
     "A couple of dogs running in a field."],
    ["A plate of food with broccoli and rice.",
     "A white plate topped with rice, meat and broccoli.",
     "The dinner plate has broccoli (steamed) and rice on it."],
    ["A red stop sign on a street corner.", "A stop sign at the corner of two streets.",
     'A street sign that says "STOP" near a building.'],
]
_CAPTION_PREDS = [
    "A man is riding a wave on a surfboard.",
    "Two dogs playing with a frisbee in a field.",
    "A plate of rice and broccoli.",
    "A cat sitting on a couch.",
]


def test_caption_scores_match_pycocoevalcap():
    # pycocoevalcap 1.2 with its Java PTBTokenizer on the same raw captions.
    expected = {
        "bleu_1": 0.784192428912219,
        "bleu_2": 0.6811368633982093,
        "bleu_3": 0.534444004446131,
        "bleu_4": 0.38952154343828943,
        "rouge_l": 0.6563426747231151,
        "cider_d": 1.982929473697028,
    }
    scores = caption_scores(_CAPTION_PREDS, _CAPTION_REFS)
    assert set(scores) == set(expected)
    for key, value in expected.items():
        assert scores[key] == pytest.approx(value, rel=1e-12), key


def test_caption_scores_rejects_bad_input():
    with pytest.raises(ValueError):
        caption_scores(["a"], [["a"], ["b"]])
    with pytest.raises(ValueError):
        caption_scores(["a"], [[]])
    with pytest.raises(ValueError):
        caption_scores([], [])


# ------------------------------------------------------------------- score file


def _write_jsonl(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_score_file_vqa(tmp_path):
    path = _write_jsonl(
        tmp_path / "vqa.jsonl",
        [
            json.dumps({"prediction": "Two", "answers": ["2"] * 10}),
            "",
            json.dumps({"prediction": "cat", "answers": [{"answer": "dog", "answer_id": 1}]}),
            json.dumps({"prediction": "yes", "references": "yes", "question": "ignored"}),
        ],
    )
    scores = score_predictions_file(path, "vqa")
    # ANLS: "two" vs "2" -> 0, "cat" vs "dog" -> 0, "yes" vs "yes" -> 1.
    assert scores == pytest.approx(
        {"vqa_accuracy": 2 / 3, "exact_match": 2 / 3, "anls": 1 / 3, "count": 3, "vqa_normalization": "always"}
    )


def test_score_file_caption(tmp_path):
    lines = [
        json.dumps({"prediction": p, "references": r})
        for p, r in zip(_CAPTION_PREDS, _CAPTION_REFS)
    ]
    scores = score_predictions_file(_write_jsonl(tmp_path / "cap.jsonl", lines), "caption")
    assert scores["count"] == 4
    assert scores["cider_d"] == pytest.approx(1.982929473697028, rel=1e-12)


@pytest.mark.parametrize(
    ("bad_line", "field", "message"),
    [
        ("{not json", None, "invalid JSON"),
        ('["a list"]', None, "expected a JSON object"),
        ('{"references": ["a"]}', "prediction", "missing"),
        ('{"prediction": 3, "references": ["a"]}', "prediction", "expected a string"),
        ('{"prediction": "a"}', "references", "missing"),
        ('{"prediction": "a", "references": []}', "references", "non-empty list"),
        ('{"prediction": "a", "references": ["ok", 5]}', "references", "item 1"),
    ],
)
def test_score_file_errors_name_file_line_and_field(tmp_path, bad_line, field, message):
    good = json.dumps({"prediction": "a", "references": ["a"]})
    path = _write_jsonl(tmp_path / "preds.jsonl", [good, good, bad_line])
    with pytest.raises(PredictionFileError) as info:
        score_predictions_file(path, "caption")
    err = info.value
    assert isinstance(err, ValueError)
    assert (err.line, err.field) == (3, field)
    text = str(err)
    assert str(path) in text and "line 3" in text and message in text
    if field:
        assert f"field '{field}'" in text


def test_score_file_other_errors(tmp_path):
    path = _write_jsonl(tmp_path / "empty.jsonl", [""])
    with pytest.raises(ValueError, match="no predictions"):
        score_predictions_file(path, "vqa")
    with pytest.raises(ValueError, match="task"):
        score_predictions_file(path, "detection")
    # "answers" is a VQA-only alias.
    path = _write_jsonl(tmp_path / "cap.jsonl", [json.dumps({"prediction": "a", "answers": ["a"]})])
    with pytest.raises(PredictionFileError, match="references"):
        score_predictions_file(path, "caption")
