"""`mmlora score` as users run it: a subprocess on the shipped example prediction files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mmlora.config.paths import assets_dir

EXAMPLES = assets_dir() / "examples"


def mmlora_score(*args):
    return subprocess.run([sys.executable, "-m", "mmlora", "score", *args], capture_output=True, text=True,
                          timeout=120)


def test_score_vqa_example_prints_the_hand_worked_metrics():
    result = mmlora_score("--task", "vqa", str(EXAMPLES / "predictions_vqa.jsonl"))
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    # Per line (VQA accuracy / exact match / ANLS), from the official definitions:
    # 1 "Two." vs nine "2" + one "3" after normalisation: acc 1, EM 1; ANLS on raw lower-cased
    #   text: "two." vs "two" is 1 edit of 4 -> 0.75.
    # 2 "yes", 2 of 10 humans: acc 0.6, EM 1, ANLS 1.
    # 3 "A red car" -> "red car", 3 humans: acc 0.9, EM 1; ANLS "a red car" vs "red car" -> 1 - 2/9.
    # 4 "dont know" -> "don't know", 1 human: acc 0.3, EM 1; ANLS 1 edit of 10 -> 0.9.
    # 5 "blue" vs ten "green": 0, 0, 0 (4 edits of 5 is above the 0.5 threshold).
    # 6 "Ten" vs the single reference "10": one reference -> exact match 1, 1; ANLS "ten"/"10" -> 0.
    assert scores == pytest.approx({
        "vqa_accuracy": (1 + 0.6 + 0.9 + 0.3 + 0 + 1) / 6,
        "exact_match": 5 / 6,
        "anls": (0.75 + 1 + (1 - 2 / 9) + 0.9 + 0 + 0) / 6,
        "count": 6,
        "vqa_normalization": "always",
    }, abs=1e-12)


def test_score_caption_example_matches_pycocoevalcap():
    pytest.importorskip("pycocoevalcap", reason="test-only dependency: pip install -r requirements.lock")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    from mmlora.evaluation.metrics import coco_tokenize

    path = EXAMPLES / "predictions_caption.jsonl"
    result = mmlora_score("--task", "caption", str(path))
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    # The reference implementation on the same tokenisation (its Java tokenizer is replaced by
    # mmlora's PTB tokenizer, which test_metrics checks against CoreNLP's output).
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    tok = lambda text: " ".join(coco_tokenize(text))  # noqa: E731
    gts = {i: [tok(r) for r in row["references"]] for i, row in enumerate(rows)}
    res = {i: [tok(row["prediction"])] for i, row in enumerate(rows)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    expected = {f"bleu_{n}": bleu[n - 1] for n in range(1, 5)}
    expected["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    expected["cider_d"] = float(Cider().compute_score(gts, res)[0])
    expected["count"] = len(rows)
    assert scores == pytest.approx(expected, abs=1e-9)
    assert scores["cider_d"] > 1.0  # four of five captions are close to their references


def test_score_reads_what_eval_writes(tmp_path):
    # predictions.jsonl records carry extra fields (image, question, base_prediction, ...).
    path = tmp_path / "predictions.jsonl"
    path.write_text(json.dumps({"image": "a.png", "question": "q", "references": ["cat"], "prediction": "Cat.",
                                "score": 1.0, "base_prediction": "dog"}) + "\n")
    result = mmlora_score("--task", "vqa", str(path))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["vqa_accuracy"] == 1.0


def test_score_bad_line_is_one_clear_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prediction": "a", "references": ["a"]}\n{"prediction": 3, "references": ["b"]}\n')
    result = mmlora_score("--task", "caption", str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mmlora: error:"), result.stderr
    assert str(path) in lines[0] and "line 2" in lines[0] and "'prediction'" in lines[0]
    assert result.stdout == ""


def test_score_missing_file_and_bad_task(tmp_path):
    result = mmlora_score("--task", "vqa", str(tmp_path / "nope.jsonl"))
    assert result.returncode == 2 and "cannot read" in result.stderr and "Traceback" not in result.stderr
    result = mmlora_score("--task", "ocr", str(EXAMPLES / "predictions_vqa.jsonl"))
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_score_loads_no_model_and_no_torch():
    probe = ("import sys; from mmlora.cli import main; "
             f"main(['score', '--task', 'vqa', {str(EXAMPLES / 'predictions_vqa.jsonl')!r}]); "
             "print('TORCH', 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert "TORCH False" in result.stdout, result.stderr
