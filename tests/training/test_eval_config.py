"""Recipe fields of evaluation: checks, Trainer arguments, TensorBoard when installed."""

from __future__ import annotations

import pytest

from mmlora.config.loading import load_recipe
from mmlora.errors import MmloraError
from mmlora.training.eval_callback import evaluation_arguments, report_targets


@pytest.mark.parametrize(("overrides", "message"), [
    (["eval.best_metric=cider_d"], "expected one of loss, vqa_accuracy, exact_match, anls for task vqa"),
    (["eval.best_metric=vqa_accuracy"], "set eval.generate_steps"),
    (["eval.best_metric=loss", "train.eval_strategy=never"], "needs train.eval_strategy"),
    (["eval.best_metric=loss", "data.eval=null"], "needs data.eval"),
    (["eval.top_p=0"], "eval.top_p"),
    (["eval.num_beams=0"], "eval.num_beams: got 0"),
    (["train.eval_steps=0"], "train.eval_steps: got 0"),
    (["eval.generate_steps=-1"], "eval.generate_steps: got -1"),
    (["train.eval_strategy=sometimes"], "one of 'never', 'steps', 'epoch'"),
])
def test_bad_evaluation_settings_name_the_field(overrides, message):
    with pytest.raises(MmloraError, match=message.replace("(", r"\(")):
        load_recipe("tiny_vqa", overrides)


def test_best_metric_accepts_trainer_style_names():
    recipe = load_recipe("tiny_caption", ["eval.best_metric=eval_cider_d", "eval.generate_steps=50"])
    assert recipe.eval.best_metric == "eval_cider_d"
    assert load_recipe("tiny_vqa", ["eval.best_metric=eval_loss"]).eval.best_metric == "eval_loss"


def test_evaluation_arguments():
    args = evaluation_arguments(load_recipe("tiny_vqa", ["train.eval_strategy=steps", "train.eval_steps=7"]))
    assert (args["eval_strategy"], args["eval_steps"], args["per_device_eval_batch_size"]) == ("steps", 7, 16)
    assert evaluation_arguments(load_recipe("tiny_vqa", ["data.eval=null"]))["eval_strategy"] == "no"
    assert evaluation_arguments(load_recipe("tiny_vqa", ["train.eval_strategy=never"]))["eval_strategy"] == "no"


def test_report_to_uses_tensorboard_when_installed(monkeypatch):
    import transformers.integrations as integrations

    monkeypatch.setattr(integrations, "is_tensorboard_available", lambda: True)
    assert report_targets(["auto"]) == ["tensorboard"]
    assert report_targets(["tensorboard", "wandb"]) == ["tensorboard", "wandb"]
    assert report_targets(["none"]) == []
    monkeypatch.setattr(integrations, "is_tensorboard_available", lambda: False)
    assert report_targets(["auto"]) == []
    with pytest.raises(MmloraError, match="pip install tensorboard"):
        report_targets(["tensorboard"])
