"""No wasted vision work: a frozen vision tower keeps no activation for backward, a trained
projector keeps only its own; gradient checkpointing still reaches the LoRA weights; the
attention kernel is picked automatically and can be overridden."""

import copy
import functools
import warnings

import pytest
import torch
from PIL import Image

from mmlora.config.loading import load_recipe
from mmlora.config.schema import LoraConfig, ModelConfig
from mmlora.data.collate import TrainingCollator, encode_for_training
from mmlora.data.samples import Sample, assistant_turn, user_turn
from mmlora.errors import MmloraError
from mmlora.models.families import QWEN2_VL
from mmlora.models.frozen_vision import skip_frozen_vision_graph
from mmlora.models.loading import load_model_and_processor, pick_attn_implementation, set_attn_implementation
from mmlora.models.lora import apply_lora


@functools.cache
def base():
    return load_model_and_processor(ModelConfig(name="tiny/qwen2-vl", max_pixels=224 * 224), device="cpu")


def build(projector="frozen", vision="frozen", checkpointing=False, skip=True):
    loaded = base()  # LoRA changes a model in place: each test gets its own copy
    model = apply_lora(copy.deepcopy(loaded.model), loaded.family,
                       LoraConfig(projector=projector, vision=vision, dropout=0.0))
    with torch.no_grad():  # B != 0, so every LoRA factor gets a gradient
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.normal_(std=0.05)
    if checkpointing:
        # What the Trainer does for train.gradient_checkpointing: it also calls
        # enable_input_require_grads, which hooks the vision tower's patch embedding too.
        model.get_base_model().activation_checkpointing_enable({"use_reentrant": False})
    if skip:
        skip_frozen_vision_graph(model, loaded.family)
    sample = Sample([Image.new("RGB", (112, 112), "red")], [user_turn("What color?"), assistant_turn("red")], "s")
    batch = TrainingCollator(loaded.processor)([encode_for_training(loaded.processor, sample, 512)])
    return model.train(), batch


def run_and_record(model, batch):
    """Forward + backward; per vision submodule: does its output require grad, and how many
    tensors did autograd save while it ran."""
    visual = model.get_base_model().model.visual
    record, current, hooks = {}, [], []

    def watch(module, name):
        def enter(mod, args):
            current.append(name)

        def leave(mod, args, out):
            current.pop()
            record[f"{name}.requires_grad"] = out.requires_grad

        hooks.extend([module.register_forward_pre_hook(enter), module.register_forward_hook(leave)])

    for block in visual.blocks:
        watch(block, "blocks")
    watch(visual.merger, "merger")
    saved = {"blocks": 0, "merger": 0}

    def pack(tensor):
        if current:
            saved[current[-1]] += 1
        return tensor

    with warnings.catch_warnings(record=True) as caught, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        warnings.simplefilter("always")
        model.zero_grad()
        model(**batch).loss.backward()
    for hook in hooks:
        hook.remove()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return record, saved, grads, [str(w.message) for w in caught]


def test_frozen_vision_tower_keeps_no_activation_for_backward():
    record, saved, grads, _ = run_and_record(*build(projector="frozen", checkpointing=True, skip=False))
    assert record["blocks.requires_grad"] and saved["blocks"] > 0  # the waste this module removes
    record, saved, grads, _ = run_and_record(*build(projector="frozen", checkpointing=True))
    assert record == {"blocks.requires_grad": False, "merger.requires_grad": False}
    assert saved == {"blocks": 0, "merger": 0}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values())


@pytest.mark.parametrize("projector", ["full", "lora"])
def test_trained_projector_alone_keeps_its_graph(projector):
    record, saved, grads, _ = run_and_record(*build(projector=projector))
    assert record == {"blocks.requires_grad": False, "merger.requires_grad": True}
    assert saved["blocks"] == 0 and saved["merger"] > 0
    merger = [n for n in grads if ".merger." in n]
    assert merger and all(grads[n].abs().sum() > 0 for n in merger)


def test_gradient_checkpointing_with_frozen_vision_reaches_lora():
    record, saved, grads, caught = run_and_record(*build(projector="full", checkpointing=True))
    assert not any("requires_grad" in message for message in caught), caught
    lora = [n for n in grads if ".lora_" in n and "language_model" in n]
    assert len(lora) == 28  # 2 layers x 7 linears x (A, B)
    assert all(grads[n].abs().sum() > 0 for n in lora)
    assert saved["blocks"] == 0


def test_vision_lora_keeps_the_vision_graph():
    model, batch = build(vision="lora", skip=False)
    assert skip_frozen_vision_graph(model, QWEN2_VL) is False
    record, saved, grads, _ = run_and_record(model, batch)
    assert record["blocks.requires_grad"]
    vision = [n for n in grads if ".visual.blocks." in n]
    assert vision and all(grads[n].abs().sum() > 0 for n in vision)


def test_attention_implementation_auto_and_override():
    assert pick_attn_implementation("auto", "cpu", torch.float32) == "sdpa"
    assert pick_attn_implementation("auto", "cuda", torch.float32) == "sdpa"  # flash-attn needs bf16/fp16
    assert pick_attn_implementation("eager", "cpu", torch.float32) == "eager"
    loaded = load_model_and_processor(ModelConfig(name="tiny/qwen2-vl"), device="cpu", attn_implementation="eager")
    assert loaded.model.config._attn_implementation == "eager"
    assert loaded.model.model.language_model.config._attn_implementation == "eager"
    assert set_attn_implementation(loaded.model, "auto") == "sdpa"
    with pytest.raises(MmloraError, match="flash_attention_2 cannot be used here"):
        set_attn_implementation(loaded.model, "flash_attention_2")


def test_liger_without_gpu_is_a_clear_error(tmp_path):
    from mmlora.training.train import train

    recipe = load_recipe("tiny_vqa", [f"train.output_dir={tmp_path}", "train.liger=true", "train.max_steps=1"])
    with pytest.raises(MmloraError, match="train.liger=true needs .*a CUDA GPU"):
        train(recipe)
