"""`mmlora train` leaves mmlora's model card in the adapter folder (base model, data, recipe,
metrics), never PEFT's blank template, and never touches a README.md of the user's."""

import json
import shutil

import pytest
import yaml

from mmlora.cli import main
from mmlora.config.schema import LoraConfig, ModelConfig
from mmlora.models.loading import load_model_and_processor
from mmlora.models.lora import apply_lora, save_adapter
from mmlora.models.model_card import CARD_MARK_PREFIX, keep_own_readme, write_run_card, write_snapshot_card

PEFT_TEMPLATE = "[More Information Needed]"


@pytest.mark.slow
def test_the_trained_adapter_carries_mmloras_card(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "tiny_vqa", "train.max_steps=1", "eval.generate_at_end=false", "lora.projector=frozen",
                 f"train.output_dir={run}"]) == 0
    card = (run / "README.md").read_text()
    assert PEFT_TEMPLATE not in card and "Model Card for Model ID" not in card
    assert "base_model: tiny/qwen2-vl" in card and "# run: LoRA adapter fine-tuned from tiny/qwen2-vl" in card
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    assert (f"- LoRA: r={recipe['lora']['r']}, alpha={recipe['lora']['alpha']}, dropout={recipe['lora']['dropout']}"
            in card)
    assert f"learning_rate={recipe['train']['learning_rate']}, seed={recipe['train']['seed']}" in card
    data = json.loads((run / "data_report.json").read_text())
    assert f"- train: `asset://demo/vqa_train.jsonl`: {data['samples']} samples from {data['rows']} rows" in card
    train_loss = json.loads((run / "train_log.jsonl").read_text().splitlines()[-1])["train_loss"]
    assert f"- training loss (mean over the run): {train_loss:.4g} at step 1" in card
    assert f"not checked yet: `mmlora export {run}`" in card


def test_a_readme_of_the_users_stays_as_it_was_through_peft(tmp_path):
    loaded = load_model_and_processor(ModelConfig(name="tiny/qwen2-vl"), device="cpu")
    model = apply_lora(loaded.model, loaded.family, LoraConfig(r=4))
    mine = "# My adapter\n\nNotes.\n"
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "README.md").write_text(mine)
    save_adapter(model, tmp_path / "plain")
    assert (tmp_path / "plain" / "README.md").read_text() != mine  # PEFT edits it (metadata, sections)
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "README.md").write_text(mine)
    with keep_own_readme(tmp_path / "kept"):  # as `mmlora train` saves its adapter
        save_adapter(model, tmp_path / "kept")
    assert (tmp_path / "kept" / "README.md").read_text() == mine
    assert not write_run_card(tmp_path / "kept", "tiny/qwen2-vl")  # nor does the card replace it
    assert (tmp_path / "kept" / "README.md").read_text() == mine


@pytest.mark.slow
def test_checkpoints_and_best_carry_mmloras_card_with_their_step_and_metrics(tmp_path):
    """checkpoint-N/ and best/ are what users copy to the hub: each says what it is (its step, its
    own losses or best metric), never PEFT's blank template."""
    run = tmp_path / "run"
    assert main(["train", "tiny_vqa", "train.max_steps=4", "train.save_steps=2", "train.logging_steps=1",
                 "train.eval_strategy=steps", "train.eval_steps=2", "eval.best_metric=loss", "eval.generate_at_end=false",
                 "lora.projector=frozen", f"train.output_dir={run}"]) == 0
    for step in (2, 4):
        folder = run / f"checkpoint-{step}"
        card = (folder / "README.md").read_text()
        assert PEFT_TEMPLATE not in card and "base_model: tiny/qwen2-vl" in card
        assert f"# checkpoint-{step}: LoRA adapter fine-tuned from tiny/qwen2-vl" in card
        assert f"Trained with mmlora: a checkpoint of its run at step {step} of 4." in card
        history = json.loads((folder / "trainer_state.json").read_text())["log_history"]
        loss = [e["loss"] for e in history if e.get("step") == step and "loss" in e][0]
        eval_loss = [e["eval_loss"] for e in history if e.get("step") == step and "eval_loss" in e][0]
        assert f"- training loss: {loss:.4g} at step {step} (the last logged before this checkpoint)" in card
        assert f"- eval loss: {eval_loss:.4g} at step {step}" in card
        assert f"mmlora infer --adapter {folder} --image" in card  # its final place, not the staging folder
        assert "- LoRA: r=16, alpha=32" in card and "- train: `asset://demo/vqa_train.jsonl`: " in card
    best = json.loads((run / "best" / "best.json").read_text())
    card = (run / "best" / "README.md").read_text()
    assert PEFT_TEMPLATE not in card and "# best: LoRA adapter fine-tuned from tiny/qwen2-vl" in card
    assert f"Trained with mmlora: the best of its run by eval loss, saved at step {best['step']}." in card
    assert f"- eval loss: {best['value']:.4g} at step {best['step']}, the best during training" in card


def test_a_readme_of_the_users_survives_a_checkpoint_or_best_being_replaced(tmp_path):
    """A new best/ (or a checkpoint saved again at the same step) replaces the folder; a README.md
    the user wrote there moves into the new one, and mmlora's card does not replace it. An
    earlier card of mmlora is replaced by the new one."""
    for old_readme, kept in (("# My best adapter\n", True), (f"old card\n{CARD_MARK_PREFIX} -->\n", False)):
        final, staged = tmp_path / "best", tmp_path / "best.tmp"
        for folder in (final, staged):
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
        (final / "README.md").write_text(old_readme)
        (staged / "README.md").write_text(f"# Model Card for Model ID\n{PEFT_TEMPLATE}\n")  # PEFT's save
        (staged / "best.json").write_text(json.dumps({"metric": "loss", "value": 0.5, "step": 3}))
        assert write_snapshot_card(staged, final, tmp_path, "tiny/qwen2-vl") is not kept
        card = (staged / "README.md").read_text()
        assert card == old_readme if kept else "the best of its run by eval loss, saved at step 3" in card
