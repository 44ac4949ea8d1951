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


@pytest.mark.parametrize("rank", [0, 1])
def test_sharded_run_says_no_generation_once_on_the_main_process_only(rank, monkeypatch, tmp_path, caplog):
    """Under FSDP/ZeRO-3 every rank turns generation and the best adapter off; only rank 0 says so
    (a simulated rank: the launcher's RANK, and the TrainerState of that rank)."""
    from types import SimpleNamespace

    from transformers import TrainerControl, TrainerState, TrainingArguments

    from mmlora.data.samples import Sample, user_turn
    from mmlora.training.eval_callback import TrainingEvaluation

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])  # before RANK: no process group
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", "2")
    recipe = load_recipe("tiny_vqa", ["eval.best_metric=vqa_accuracy", "eval.generate_steps=5"])
    evaluation = TrainingEvaluation(recipe, None, [Sample([], [user_turn("q?")], "a")], None)
    evaluation.trainer = SimpleNamespace(is_fsdp_enabled=True)  # what Trainer sets under an FSDP launch
    state = TrainerState(is_world_process_zero=rank == 0, is_local_process_zero=rank == 0)
    with caplog.at_level("WARNING", logger="mmlora.training.eval_callback"):
        evaluation.on_train_begin(args, state, TrainerControl())
    said = [r.getMessage() for r in caplog.records if "ZeRO-3/FSDP" in r.getMessage()]
    assert said == (["ZeRO-3/FSDP: no generation metrics or best adapter during training; run `mmlora eval` "
                     "on the saved adapter instead."] if rank == 0 else [])
    assert (evaluation.generated, evaluation.best_metric) == ([], None)
