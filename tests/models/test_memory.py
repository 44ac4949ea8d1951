"""The memory planner: the meta-device dry run counts exactly what a real run saves for
backward, the estimate adds up from its parts, and `mmlora plan` prints it."""

import pytest
import torch

from mmlora.config.loading import load_recipe
from mmlora.models.loading import load_model_and_processor
from mmlora.models.lora import apply_lora
from mmlora.models.memory import (
    LOSS_BYTES_PER_LOGIT, estimate_memory, meta_lora_model, saved_activations, training_flops,
)

BATCH, LENGTH = 3, 100


@pytest.fixture(scope="module")
def recipe():
    return load_recipe("tiny_vqa", ["lora.dropout=0.1"])


def real_saved_bytes(model, family) -> int:
    """Bytes autograd saves in the language tower of a real model (storages counted once, weights not)."""
    text = model.get_base_model().get_submodule(family.language_model)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(tensor):
        key = tensor.untyped_storage().data_ptr()
        if key not in weights:
            saved[key] = tensor  # kept alive, so no address is reused while counting
        return tensor

    embeds = torch.randn(BATCH, LENGTH, text.config.hidden_size, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        text(inputs_embeds=embeds, use_cache=False)
    return sum(t.untyped_storage().nbytes() for t in saved.values())


def test_meta_dry_run_counts_exactly_what_a_real_run_saves(recipe):
    loaded = load_model_and_processor(recipe.model, device="cpu")
    model = apply_lora(loaded.model, loaded.family, recipe.lora).train()
    torch.manual_seed(0)  # dropout masks: same sizes whatever the seed
    real = real_saved_bytes(model, loaded.family)
    meta, family = meta_lora_model(recipe, torch.float32)
    # No padding: no mask, grouped k/v kept as they are, as CPU SDPA and flash-attention do.
    per_layer, outside = saved_activations(meta.train(), family, BATCH, LENGTH)
    assert len(per_layer) == 2 and sum(per_layer) + outside == real
    masked, _ = saved_activations(meta, family, BATCH, LENGTH, masked=True)  # k/v repeated, bias kept
    assert sum(masked) > sum(per_layer)


def test_estimate_adds_up_and_scales(recipe):
    model, family = meta_lora_model(recipe, torch.float32)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    small = estimate_memory(recipe, batch_size=2, seq_len=128, model=model)
    big = estimate_memory(recipe, batch_size=4, seq_len=128, model=model)
    assert small.trainable == small.gradients == 4 * trainable and small.optimizer == 8 * trainable
    assert small.weights == 4 * frozen
    vocab = model.get_output_embeddings().weight.shape[0]
    assert small.loss == LOSS_BYTES_PER_LOGIT * 2 * 128 * vocab and big.loss == 2 * small.loss
    assert abs(big.activations - 2 * small.activations) <= small.activations * 0.05  # linear in the batch
    assert small.total == sum([small.weights, small.trainable, small.gradients, small.optimizer,
                               small.activations, small.loss, small.projector])
    assert small.projector == 0  # the tiny_vqa projector is trained: it needs visual tokens
    with_images = estimate_memory(recipe, batch_size=2, seq_len=128, visual_tokens=64, model=model)
    assert with_images.projector > 0
    checkpointed = estimate_memory(recipe, batch_size=2, seq_len=128, gradient_checkpointing=True, model=model)
    assert checkpointed.activations < small.activations and checkpointed.gradient_checkpointing


def test_training_flops_count_frozen_lora_and_head(recipe):
    model, family = meta_lora_model(recipe, torch.float32)
    one = training_flops(model, family, tokens=100, seq_len=100)
    two = training_flops(model, family, tokens=200, seq_len=100)
    assert two == pytest.approx(2 * one)
    assert training_flops(model, family, tokens=100, seq_len=100, vision_patches=64) > one


def test_plan_prints_the_memory_estimate(capsys):
    from mmlora.cli import main

    assert main(["plan", "tiny_vqa"]) == 0
    out = capsys.readouterr().out
    assert "peak GPU memory per device" in out
    assert "without gradient checkpointing" in out and "with gradient checkpointing" in out
    assert "training FLOPs per step" in out
