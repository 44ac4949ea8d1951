"""VQA accuracy under both normalisation rules, checked against the official algorithm, and the
rule named next to every VQA-accuracy number (`mmlora score`, `mmlora eval`, reports, JSON)."""

import json
import subprocess
import sys

import pytest

from mmlora.config.loading import load_recipe
from mmlora.errors import MmloraError
from mmlora.evaluation.metrics import score_task, vqa_accuracy
from mmlora.evaluation.metrics.vqa_normalize import process_digit_article, process_punctuation


def official_vqa_eval(prediction: str, answers: list[str]) -> float:
    """The accuracy loop of vqaEval.py (GT-Vision-Lab/VQA master, "Fixed processing answers bug"),
    restated: answers are dicts (unique through answer_id); newlines/tabs -> spaces and strip on
    both sides; punctuation and digit/article processing of answers *and* prediction only when
    the cleaned answers are not all equal; then the leave-one-out min(matches / 3, 1) mean."""
    gts = [{"answer": a, "answer_id": i} for i, a in enumerate(answers)]
    for entry in gts:
        entry["answer"] = entry["answer"].replace("\n", " ").replace("\t", " ").strip()
    result = prediction.replace("\n", " ").replace("\t", " ").strip()
    if len({entry["answer"] for entry in gts}) > 1:
        for entry in gts:
            entry["answer"] = process_digit_article(process_punctuation(entry["answer"]))
        result = process_digit_article(process_punctuation(result))
    accuracies = []
    for held_out in gts:
        others = [entry for entry in gts if entry != held_out]
        accuracies.append(min(1.0, sum(entry["answer"] == result for entry in others) / 3))
    return sum(accuracies) / len(accuracies)


# (prediction, answers): the first six are where the two rules differ (annotators agree, so the
# official script compares raw strings), the rest where they must agree.
ADVERSARIAL = [
    ("Yes.", ["yes"] * 10),
    ("two", ["2"] * 10),
    ("2", ["two"] * 10),
    ("dog", ["the dog"] * 10),
    ("Yes", ["Yes."] * 10),
    ("1,000", ["1000"] * 10),
    ("Yes.", ["Yes."] * 10),
    ("Two", ["2"] * 6 + ["3"] * 4),
    ("red ", ["red\n"] * 10),
    ("yes", ["yes"] * 9 + ["Yes"]),
    ("the Dog!", ["dog"] * 2 + ["dogs"] * 8),
    ("no", ["yes"] * 10),
]
PREDICTIONS = [p for p, _ in ADVERSARIAL]
ANSWERS = [a for _, a in ADVERSARIAL]


@pytest.mark.parametrize("prediction, answers", ADVERSARIAL)
def test_official_rule_matches_the_official_algorithm(prediction, answers):
    assert vqa_accuracy(prediction, answers, normalization="official") == pytest.approx(
        official_vqa_eval(prediction, answers))


def test_score_task_scores_with_the_chosen_rule_and_the_rules_differ():
    official = score_task("vqa", PREDICTIONS, ANSWERS, vqa_normalization="official")
    always = score_task("vqa", PREDICTIONS, ANSWERS, vqa_normalization="always")
    expected = [official_vqa_eval(p, a) for p, a in ADVERSARIAL]
    assert official.per_sample == pytest.approx(expected)
    assert official.metrics["vqa_accuracy"] == pytest.approx(sum(expected) / len(expected))
    assert always.per_sample[:6] == [1.0] * 6 and official.per_sample[:6] == [0.0] * 6
    assert always.per_sample[6:] == pytest.approx(official.per_sample[6:])
    assert always.metrics["vqa_accuracy"] - official.metrics["vqa_accuracy"] > 0.02  # > 2 points


def _predictions_file(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text("".join(json.dumps({"prediction": p, "answers": a}) + "\n" for p, a in ADVERSARIAL))
    return path


def test_score_command_offers_both_rules_and_names_the_rule(tmp_path):
    path = _predictions_file(tmp_path)
    printed = {}
    for rule in ("official", "always"):
        result = subprocess.run([sys.executable, "-m", "mmlora", "score", "--task", "vqa", "--vqa-normalization",
                                 rule, str(path)], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        printed[rule] = json.loads(result.stdout)
        assert printed[rule]["vqa_normalization"] == rule
    expected = sum(official_vqa_eval(p, a) for p, a in ADVERSARIAL) / len(ADVERSARIAL)
    assert printed["official"]["vqa_accuracy"] == pytest.approx(expected)
    assert printed["always"]["vqa_accuracy"] > expected + 0.02
    # Exact match and ANLS have one rule each: the flag does not move them.
    assert printed["official"]["exact_match"] == printed["always"]["exact_match"]


def test_recipe_field_and_eval_flag():
    assert load_recipe("tiny_vqa").eval.vqa_normalization == "always"
    assert load_recipe("tiny_vqa", ["eval.vqa_normalization=official"]).eval.vqa_normalization == "official"
    with pytest.raises(MmloraError, match=r"eval\.vqa_normalization: got 'sometimes', expected one of"):
        load_recipe("tiny_vqa", ["eval.vqa_normalization=sometimes"])
    from mmlora.cli import build_parser
    from mmlora.cli_checks import collect_overrides

    args = collect_overrides(build_parser(), ["eval", "tiny_vqa", "--vqa-normalization", "official"])
    assert args.vqa_normalization == "official"


def test_reports_label_vqa_accuracy_with_its_rule(tmp_path):
    from mmlora.evaluation.report import metric_rows
    from mmlora.evaluation.results import EvalItem, EvalReport, FINE_TUNED, ModelRun
    from mmlora.evaluation.run import write_outputs

    items = [EvalItem(f"row{k}", "", "q", answers) for k, answers in enumerate(ANSWERS)]
    recipe = load_recipe("tiny_vqa", ["eval.vqa_normalization=official"])
    scores = score_task("vqa", PREDICTIONS, ANSWERS, vqa_normalization="official")
    report = EvalReport("vqa", "eval", "x.jsonl", items, [ModelRun(FINE_TUNED, "runs/x", PREDICTIONS, scores)],
                        vqa_normalization="official")
    assert metric_rows(report)[0][0] == "VQA accuracy (official)"
    write_outputs(report, tmp_path, recipe)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["vqa_normalization"] == "official"
    assert metrics["models"][FINE_TUNED]["vqa_normalization"] == "official"
    assert "| VQA accuracy (official) |" in (tmp_path / "report.md").read_text()
    assert "VQA accuracy (official)" in (tmp_path / "report.html").read_text()


def test_eval_command_takes_the_flag_and_labels_its_numbers(tmp_path, capsys):
    # The numbers themselves are checked above (score_task is what eval scores with); the tiny
    # model's answers are random, so here only the flag's path to the outputs is checked.
    # Through the CLI's entry point in this process (torch is imported already).
    from mmlora.cli import main

    out = tmp_path / "eval"
    code = main(["eval", "tiny_vqa", "--limit", "4", "--output-dir", str(out),
                 f"train.output_dir={tmp_path / 'none'}", "--vqa-normalization", "official"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert any(line.startswith("VQA accuracy (official)") for line in printed.out.splitlines()), printed.out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["vqa_normalization"] == metrics["models"]["base"]["vqa_normalization"] == "official"
