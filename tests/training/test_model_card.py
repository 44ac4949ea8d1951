"""`mmlora train` leaves mmlora's model card in the adapter folder (base model, data, recipe,
metrics), never PEFT's blank template, and never touches a README.md of the user's."""

import json

import pytest
import yaml

from mmlora.cli import main
from mmlora.config.schema import LoraConfig, ModelConfig
from mmlora.models.loading import load_model_and_processor
from mmlora.models.lora import apply_lora, save_adapter
from mmlora.models.model_card import keep_own_readme, write_run_card

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
