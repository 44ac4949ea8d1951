"""A short, seeded tiny fine-tune with evaluation inside training, then `mmlora eval --compare-base`.

One training run for the whole module (~60 steps): what it logs and writes (eval loss at the
interval, generation metrics, the best adapter, loss.png) and what `mmlora eval` makes of it
(the three files, the fine-tuned model measurably above the base).
"""

from __future__ import annotations

import json

import pytest
from PIL import Image

from mmlora.cli import main
from mmlora.config.loading import load_recipe
from mmlora.evaluation.metrics import score_predictions_file, vqa_scores
from mmlora.evaluation.plot import EVAL_COLOR, TRAIN_COLOR

pytestmark = pytest.mark.slow

STEPS, INTERVAL = 60, 20
OVERRIDES = [
    f"train.max_steps={STEPS}", "train.logging_steps=5", "train.save_steps=0",
    "train.eval_strategy=steps", f"train.eval_steps={INTERVAL}",
    f"eval.generate_steps={INTERVAL}", "eval.generate_subset=16", "eval.best_metric=vqa_accuracy",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Train through the CLI, as users do; returns the run directory and the recipe."""
    out = tmp_path_factory.mktemp("tiny_vqa") / "run"
    overrides = OVERRIDES + [f"train.output_dir={out}"]
    assert main(["train", "tiny_vqa", *overrides]) == 0
    return out, load_recipe("tiny_vqa", overrides)


@pytest.fixture(scope="module")
def evaluated(trained, tmp_path_factory):
    out, recipe = trained
    report_dir = tmp_path_factory.mktemp("eval")
    code = main(["eval", "tiny_vqa", f"train.output_dir={out}", "--compare-base", "--output-dir", str(report_dir)])
    assert code == 0
    return report_dir, json.loads((report_dir / "metrics.json").read_text())


def _log(out):
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_eval_loss_logged_at_the_recipe_interval(trained):
    out, _ = trained
    steps = [entry["step"] for entry in _log(out) if "eval_loss" in entry]
    assert steps == list(range(INTERVAL, STEPS + 1, INTERVAL))


def test_training_loss_still_logged_at_every_logging_step(trained):
    # Generation metrics are logged from on_step_end at steps 20, 40, 60; the training loss due
    # at those steps must not be dropped.
    out, _ = trained
    assert [e["step"] for e in _log(out) if "loss" in e] == list(range(5, STEPS + 1, 5))


def test_generation_metrics_logged_during_and_after_training(trained):
    out, _ = trained
    log = _log(out)
    assert [e["step"] for e in log if "eval_vqa_accuracy" in e] == list(range(INTERVAL, STEPS + 1, INTERVAL))
    (final,) = [e for e in log if "final_vqa_accuracy" in e]
    assert final["step"] == STEPS
    written = json.loads((out / "eval_metrics.json").read_text())
    assert written["final"]["count"] == 54 and written["final"]["vqa_accuracy"] == final["final_vqa_accuracy"]
    # eval_predictions.jsonl holds the answers behind the final metrics.
    assert score_predictions_file(out / "eval_predictions.jsonl", "vqa")["vqa_accuracy"] == pytest.approx(
        written["final"]["vqa_accuracy"])


def test_best_adapter_is_the_best_of_the_measured_steps(trained):
    out, _ = trained
    written = json.loads((out / "eval_metrics.json").read_text())
    measured = [(e["vqa_accuracy"], e["step"]) for e in written["history"] if "vqa_accuracy" in e]
    assert len(measured) == STEPS // INTERVAL
    best = json.loads((out / "best" / "best.json").read_text())
    top = max(v for v, _ in measured)
    # The first step that reached the top value is kept (ties do not replace it).
    assert best == {"metric": "vqa_accuracy", "value": top, "step": min(s for v, s in measured if v == top)}
    assert (out / "best" / "adapter_model.safetensors").is_file() and (out / "best" / "recipe.yaml").is_file()
    assert not (out / "best.tmp").exists() and not (out / "best.old").exists()


def test_loss_png_has_train_and_eval_curves(trained):
    out, _ = trained
    image = Image.open(out / "loss.png").convert("RGB")
    colors = set(image.getdata())
    assert TRAIN_COLOR in colors and EVAL_COLOR in colors


def test_compare_base_writes_all_files_and_fine_tuned_beats_base(evaluated):
    report_dir, metrics = evaluated
    for name in ("predictions.jsonl", "metrics.json", "report.md", "report.html"):
        assert (report_dir / name).is_file(), name
    base, tuned = metrics["models"]["base"], metrics["models"]["fine-tuned"]
    assert base["count"] == tuned["count"] == 54
    assert tuned["vqa_accuracy"] > base["vqa_accuracy"] + 0.1, (base, tuned)
    assert metrics["difference"]["vqa_accuracy"] == pytest.approx(tuned["vqa_accuracy"] - base["vqa_accuracy"])
    report = (report_dir / "report.md").read_text()
    row = (f"| VQA accuracy (always) | {100 * base['vqa_accuracy']:.1f} | {100 * tuned['vqa_accuracy']:.1f} | "
           f"{100 * (tuned['vqa_accuracy'] - base['vqa_accuracy']):+.1f} |")
    assert row in report


def test_predictions_file_rescored_gives_metrics_json(evaluated):
    report_dir, metrics = evaluated
    path = report_dir / "predictions.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 54
    assert {"image", "question", "references", "prediction", "score", "base_prediction", "question_type"} <= set(records[0])
    tuned = {k: v for k, v in metrics["models"]["fine-tuned"].items() if k != "model"}
    assert score_predictions_file(path, "vqa") == pytest.approx(tuned)
    base = {k: v for k, v in metrics["models"]["base"].items() if k not in ("model", "vqa_normalization")}
    assert metrics["models"]["base"]["vqa_normalization"] == metrics["vqa_normalization"] == "always"
    assert vqa_scores([r["base_prediction"] for r in records], [r["references"] for r in records]) == pytest.approx(base)


def test_breakdown_by_question_type_and_differing_examples(evaluated):
    report_dir, metrics = evaluated
    (table,) = metrics["breakdowns"]
    assert table["by"] == "question_type"
    assert {row["group"]: row["count"] for row in table["rows"]} == {"background color": 27, "shape color": 27}
    report = (report_dir / "report.md").read_text()
    assert "## VQA accuracy (always) by question_type" in report
    records = [json.loads(line) for line in (report_dir / "predictions.jsonl").read_text().splitlines()]
    differ = sum(r["prediction"] != r["base_prediction"] for r in records)
    assert f"## Where the two models differ ({differ} of 54 samples" in report


def test_eval_agrees_with_the_final_metrics_of_training(trained, evaluated):
    out, _ = trained
    _, metrics = evaluated
    final = json.loads((out / "eval_metrics.json").read_text())["final"]
    # Same samples and greedy settings; training measured the unmerged LoRA model, eval the
    # merged weights: at most one answer may flip on a near-tie.
    assert abs(final["vqa_accuracy"] - metrics["models"]["fine-tuned"]["vqa_accuracy"]) <= 1 / 54 + 1e-12


def test_report_html_of_a_real_run_embeds_every_image(evaluated):
    report_dir, _ = evaluated
    text = (report_dir / "report.html").read_text()
    assert text.count('<article class="card"') == 54 and text.count('<img class="thumb" src="data:image/jpeg') == 54
    assert "https://" not in text and "http://" not in text
    assert 'src="data:image/png;base64,' in text  # the run's loss.png, embedded


def test_eval_errors_are_one_line(trained, tmp_path, capsys):
    out, _ = trained
    assert main(["eval", "tiny_vqa", f"train.output_dir={tmp_path}", "--compare-base"]) == 2
    assert "--compare-base needs an adapter" in capsys.readouterr().err
    assert main(["eval", "tiny_vqa", "--adapter", str(tmp_path)]) == 2
    assert "not an adapter directory" in capsys.readouterr().err
    assert main(["eval", "tiny_vqa", f"train.output_dir={out}", "--split", "test"]) == 2
    assert "--split 'test'" in capsys.readouterr().err
