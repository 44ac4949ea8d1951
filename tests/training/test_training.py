"""A real (tiny) training run with the demo's recipe and budget: learning, frozen base, adapter IO."""

import pytest
import torch

from mmlora.config.loading import load_recipe
from mmlora.config.schema import ModelConfig
from mmlora.data.collate import TrainingCollator, encode_for_training
from mmlora.data.loading import load_samples
from mmlora.demo import evaluate_samples
from mmlora.models.loading import load_model_and_processor
from mmlora.models.tiny import build_tiny_model
from mmlora.training.train import prepare_model, train

pytestmark = pytest.mark.slow


def base_name(peft_name: str) -> str | None:
    """The base model's own name of a PEFT parameter, or None for LoRA / trained copies."""
    if ".lora_" in peft_name or ".modules_to_save." in peft_name:
        return None
    name = peft_name.removeprefix("base_model.model.")
    return name.replace(".base_layer.", ".").replace(".original_module.", ".")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    recipe = load_recipe("tiny_vqa", [f"train.output_dir={tmp_path_factory.mktemp('run')}"])
    loaded = load_model_and_processor(recipe.model, device="cpu")
    base_weights = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    eval_samples = load_samples(recipe.data.eval, recipe.data, recipe.task)
    _, accuracy_before = evaluate_samples(loaded.model, loaded.processor, eval_samples, recipe)
    result = train(recipe, loaded=loaded)
    _, accuracy_after = evaluate_samples(result.model, loaded.processor, eval_samples, recipe)
    return recipe, result, base_weights, accuracy_before, accuracy_after, eval_samples


def test_learning_is_real(run):
    _, _, _, before, after, eval_samples = run
    assert len(eval_samples) >= 50
    assert before <= 0.40, f"untrained model already scores {before:.0%}"
    assert after >= 0.90, f"trained model scores only {after:.0%}"


def test_base_weights_bit_identical_and_every_lora_weight_changed(run):
    recipe, result, base_weights, *_ = run
    seen = set()
    for name, param in result.model.named_parameters():
        original = base_name(name)
        if original is not None:
            assert torch.equal(param.detach().cpu(), base_weights[original]), f"base weight {original} changed"
            seen.add(original)
    assert seen == set(dict(build_tiny_model("tiny/qwen2-vl").named_parameters()))

    # The same seed gives the same LoRA init: rebuild it to compare against.
    fresh = load_model_and_processor(ModelConfig(name="tiny/qwen2-vl"), device="cpu")
    _, initial = prepare_model(recipe, fresh)
    initial = dict(initial.named_parameters())
    trained = [(n, p) for n, p in result.model.named_parameters() if p.requires_grad]
    assert trained and all(".lora_" in n or ".modules_to_save." in n for n, _ in trained)
    for name, param in trained:
        assert not torch.equal(param.detach(), initial[name].detach()), f"{name} did not change"


def test_saved_adapter_loads_with_plain_peft(run):
    from peft import PeftModel

    recipe, result, *_ , eval_samples = run
    out = result.output_dir
    assert (out / "adapter_model.safetensors").is_file() and (out / "recipe.yaml").is_file()
    assert (out / "train_log.jsonl").read_text().strip()
    reloaded = PeftModel.from_pretrained(build_tiny_model("tiny/qwen2-vl"), out).eval()
    processor = result.loaded.processor
    batch = TrainingCollator(processor)([encode_for_training(processor, s, 256) for s in eval_samples[:4]])
    result.model.eval()
    with torch.no_grad():
        expected = result.model(**batch).logits
        got = reloaded(**batch).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
