"""LoRA variants on the tiny Qwen2-VL: DoRA, rsLoRA and PiSSA train, save and merge with equal
logits; LoRA+ and per-component learning rates reach the optimizer's param groups."""

import json

import pytest
import torch
from transformers import TrainerCallback

from mmlora.config.loading import load_recipe
from mmlora.config.paths import assets_dir
from mmlora.data.collate import TrainingCollator, encode_for_training
from mmlora.data.loading import load_samples
from mmlora.models.tiny import build_tiny_model
from mmlora.training.train import train

pytestmark = pytest.mark.slow


def short_run(tmp_path, *overrides, callbacks=()):
    demo = assets_dir() / "demo"
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join((demo / "vqa_train.jsonl").read_text().splitlines()[:8]) + "\n")
    recipe = load_recipe("tiny_vqa", [
        f"data.train={data}", f"data.image_root={demo}", f"train.output_dir={tmp_path / 'run'}",
        "train.max_steps=4", "train.batch_size=2", "train.logging_steps=1", "train.save_steps=0", "train.eval_strategy=never",
        "eval.generate_at_end=false", "lora.r=4", "lora.alpha=8", *overrides,
    ])
    result = train(recipe, callbacks=list(callbacks))
    processor = result.loaded.processor
    samples = load_samples(str(data), recipe.data, recipe.task)
    batch = TrainingCollator(processor)([encode_for_training(processor, s, 256) for s in samples[:4]])
    result.model.eval()
    with torch.no_grad():
        logits = result.model(**batch).logits
    return result, batch, logits


def assert_close_at_scale(got, expected) -> None:
    """Within 1e-5 of the logits' scale (see test_families.assert_logits_match for why)."""
    assert (got - expected).abs().max().item() <= 1e-5 * max(1.0, expected.abs().max().item())


@pytest.mark.parametrize("variant", ["lora.use_dora=true", "lora.use_rslora=true", "lora.init=pissa"])
def test_variant_trains_saves_and_merges_with_equal_logits(tmp_path, variant):
    from peft import PeftModel

    from mmlora.models.merge import merge_adapter

    result, batch, logits = short_run(tmp_path, variant)
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    saved = json.loads((result.output_dir / "adapter_config.json").read_text())
    # PiSSA's adapter is saved converted to plain LoRA of rank 2r for the unchanged base model
    assert (saved["r"], saved["init_lora_weights"]) == ((8, True) if "pissa" in variant else (4, True))
    assert saved["use_dora"] == ("dora" in variant) and saved["use_rslora"] == ("rslora" in variant)
    plain = PeftModel.from_pretrained(build_tiny_model("tiny/qwen2-vl"), result.output_dir).eval()
    with torch.no_grad():
        assert_close_at_scale(plain(**batch).logits, logits)
    merged = merge_adapter(result.output_dir, tmp_path / "merged", dtype="fp32")
    with torch.no_grad():
        assert_close_at_scale(merged.model(**batch).logits, logits)


class CaptureOptimizer(TrainerCallback):
    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        self.groups = optimizer.param_groups


def test_loraplus_and_component_learning_rates_reach_the_optimizer(tmp_path):
    capture = CaptureOptimizer()
    result, *_ = short_run(
        tmp_path, "train.max_steps=1", "train.learning_rate=2.0e-4", "train.lr_scheduler=constant",
        "lora.projector=lora", "lora.vision=lora", "lora.loraplus_lr_ratio=16", "lora.projector_lr=1.0e-3",
        "lora.vision_lr=5.0e-4", callbacks=[capture])
    lr_of = {id(p): g["initial_lr"] for g in capture.groups for p in g["params"]}
    names = {n: p for n, p in result.model.named_parameters() if p.requires_grad}
    assert set(lr_of) == {id(p) for p in names.values()}  # every trained parameter, once
    for name, param in names.items():
        base = 1e-3 if ".visual.merger." in name else 5e-4 if ".visual." in name else 2e-4
        expected = base * 16 if ".lora_B." in name else base
        assert lr_of[id(param)] == pytest.approx(expected), name
    assert {g["name"] for g in capture.groups} == {
        "language", "language lora_B", "vision", "vision lora_B", "projector", "projector lora_B"}


def test_without_loraplus_the_trainer_keeps_its_own_groups(tmp_path):
    capture = CaptureOptimizer()
    short_run(tmp_path, "train.max_steps=1", callbacks=[capture])
    assert all("name" not in g for g in capture.groups)
