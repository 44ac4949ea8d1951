"""Logits only at trained positions: the same loss and LoRA gradients as full logits, for padded
and packed batches; and a real training run with packing logs the losses of the unpacked run."""

import json

import pytest
import torch

from mmlora.config.loading import load_recipe
from mmlora.config.schema import LoraConfig, ModelConfig
from mmlora.data.collate import IGNORE_INDEX, TrainingCollator, encode_for_training
from mmlora.data.packing import PackingCollator
from mmlora.models.loading import load_model_and_processor
from mmlora.models.lora import apply_lora
from mmlora.training.trained_logits import TrainedLogitsOnly, trained_positions
from tests.data.test_packing import make_samples


def test_trained_positions_are_the_shifted_labels():
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 7, 8, IGNORE_INDEX], [IGNORE_INDEX, 5, IGNORE_INDEX, 6, 9]])
    keep, shift_labels = trained_positions(labels)
    assert keep.tolist() == [[False, True, True, False, False], [True, False, True, True, False]]
    assert shift_labels.tolist() == [7, 8, 5, 6, 9]


@pytest.mark.parametrize("model_id", ["tiny/qwen2-vl", "tiny/llava"])
def test_same_loss_and_gradients_with_trained_logits_only(model_id):
    loaded = load_model_and_processor(ModelConfig(name=model_id, max_pixels=224 * 224), device="cpu")
    model = apply_lora(loaded.model, loaded.family, LoraConfig(dropout=0.0)).train()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.normal_(std=0.05)
    examples = [encode_for_training(loaded.processor, s, 1024) for s in make_samples()]
    for collator in (TrainingCollator(loaded.processor), PackingCollator(loaded.processor)):
        full, trimmed = collator(examples), TrainedLogitsOnly(collator)(examples)
        n_trained = int((full["labels"][:, 1:] != IGNORE_INDEX).sum())
        results = []
        for batch in (full, trimmed):
            model.zero_grad()
            out = model(**batch, num_items_in_batch=n_trained)  # the Trainer's per-token normalisation
            out.loss.backward()
            results.append((out, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
        (out_full, grads_full), (out_trim, grads_trim) = results
        assert out_trim.logits.shape == (n_trained, out_full.logits.shape[-1])
        assert out_trim.logits.shape[0] < out_full.logits.shape[0] * out_full.logits.shape[1] / 2
        torch.testing.assert_close(out_trim.loss, out_full.loss, rtol=1e-6, atol=1e-6)
        for name, grad in grads_full.items():
            torch.testing.assert_close(grads_trim[name], grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.slow
def test_training_with_packing_logs_the_losses_of_training_without(tmp_path):
    from mmlora.config.paths import assets_dir
    from mmlora.training.train import train

    images = sorted((assets_dir() / "demo" / "images").glob("*.png"))[:24]
    long = "a red circle on a white background and a blue square " * 10  # long rows leave room for short ones
    rows = [{"image": str(image), "question": "What is it?", "answer": long if i % 4 == 0 else "red"}
            for i, image in enumerate(images)]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    losses = {}
    for packing in (False, True):
        out = tmp_path / f"packing-{packing}"
        recipe = load_recipe("tiny_vqa", [f"train.output_dir={out}", f"data.train={data}", "data.eval=null",
                                          "data.allow_outside_root=true", "train.max_steps=3", "train.logging_steps=1",
                                          f"data.packing={packing}",
                                          "eval.generate_at_end=false", "train.save_steps=0"])
        train(recipe)
        log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        losses[packing] = [entry["loss"] for entry in log if "loss" in entry]
    assert len(losses[True]) == 3
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
