"""What is trained: exact trainable parameter names for every family and every lora.projector /
lora.vision setting (names written out here, not computed by mmlora), targets, exclude, errors."""

import re

import pytest
import torch

from mmlora.config.schema import LoraConfig
from mmlora.errors import MmloraError
from mmlora.models.families import FAMILIES
from mmlora.models.lora import apply_lora, count_parameters, resolve_adapted_modules
from mmlora.models.tiny import build_tiny_model

LAYERS = (0, 1)
DECODER = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
CLIP_LIKE = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")


def per_layer(prefix: str, names) -> list[str]:
    return [f"{prefix}.{i}.{n}" for i in LAYERS for n in names]


# family -> (language linear layers, vision linear layers without the projector,
#            projector linear layers, projector parameters trained by projector=full)
LAYOUT = {
    "qwen2_vl": (
        per_layer("model.language_model.layers", DECODER),
        per_layer("model.visual.blocks", ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")),
        ["model.visual.merger.mlp.0", "model.visual.merger.mlp.2"],
        [f"model.visual.merger.modules_to_save.default.{p}" for p in
         ("ln_q.weight", "ln_q.bias", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias")],
    ),
    "qwen2_5_vl": (
        per_layer("model.language_model.layers", DECODER),
        per_layer("model.visual.blocks", ("attn.qkv", "attn.proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")),
        ["model.visual.merger.mlp.0", "model.visual.merger.mlp.2"],
        [f"model.visual.merger.modules_to_save.default.{p}" for p in
         ("ln_q.weight", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias")],
    ),
    "qwen3_vl": (
        per_layer("model.language_model.layers", DECODER),
        per_layer("model.visual.blocks", ("attn.qkv", "attn.proj", "mlp.linear_fc1", "mlp.linear_fc2")),
        ["model.visual.merger.linear_fc1", "model.visual.merger.linear_fc2",
         "model.visual.deepstack_merger_list.0.linear_fc1", "model.visual.deepstack_merger_list.0.linear_fc2"],
        [f"{m}.modules_to_save.default.{p}" for m in ("model.visual.merger", "model.visual.deepstack_merger_list.0")
         for p in ("norm.weight", "norm.bias", "linear_fc1.weight", "linear_fc1.bias", "linear_fc2.weight",
                   "linear_fc2.bias")],
    ),
    "llava": (
        per_layer("model.language_model.layers", DECODER),
        per_layer("model.vision_tower.encoder.layers", CLIP_LIKE),
        ["model.multi_modal_projector.linear_1", "model.multi_modal_projector.linear_2"],
        [f"model.multi_modal_projector.modules_to_save.default.{p}" for p in
         ("linear_1.weight", "linear_1.bias", "linear_2.weight", "linear_2.bias")],
    ),
    "idefics3": (
        per_layer("model.text_model.layers", DECODER),
        per_layer("model.vision_model.encoder.layers", CLIP_LIKE),
        ["model.connector.modality_projection.proj"],
        ["model.connector.modules_to_save.default.modality_projection.proj.weight"],
    ),
    "gemma3": (
        per_layer("model.language_model.layers", DECODER),
        per_layer("model.vision_tower.encoder.layers", CLIP_LIKE),
        [],  # a norm and a bare weight matrix: no linear layer for LoRA
        [f"model.multi_modal_projector.modules_to_save.default.{p}" for p in
         ("mm_input_projection_weight", "mm_soft_emb_norm.weight")],
    ),
    "paligemma": (
        per_layer("model.language_model.layers", DECODER),
        per_layer("model.vision_tower.encoder.layers", CLIP_LIKE),
        ["model.multi_modal_projector.linear"],
        [f"model.multi_modal_projector.modules_to_save.default.{p}" for p in ("linear.weight", "linear.bias")],
    ),
}
LAYOUT["llava_next"] = LAYOUT["llava"]
TINY = {f.name: f.tiny.model_id for f in FAMILIES}


def lora_names(modules) -> set[str]:
    return {f"base_model.model.{m}.lora_{ab}.default.weight" for m in modules for ab in "AB"}


def trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def tiny_models():
    """One pristine tiny model per family; tests wrap deep copies (PEFT modifies in place)."""
    return {name: build_tiny_model(model_id) for name, model_id in TINY.items()}


def test_every_family_is_described_here():
    assert set(LAYOUT) == {f.name for f in FAMILIES}


@pytest.mark.parametrize("vision", ["frozen", "lora"])
@pytest.mark.parametrize("projector", ["frozen", "lora", "full"])
@pytest.mark.parametrize("family", [f.name for f in FAMILIES])
def test_trainable_parameter_names_are_exactly_expected(tiny_models, family, projector, vision):
    import copy

    language, vision_layers, projector_layers, projector_full = LAYOUT[family]
    fam = next(f for f in FAMILIES if f.name == family)
    model = copy.deepcopy(tiny_models[family])
    if projector == "lora" and not projector_layers:
        with pytest.raises(MmloraError, match="has no linear layers; use lora.projector=full"):
            apply_lora(model, fam, LoraConfig(projector=projector, vision=vision))
        return
    peft_model = apply_lora(model, fam, LoraConfig(projector=projector, vision=vision))
    expected = lora_names(language)
    if vision == "lora":
        expected |= lora_names(vision_layers)
    if projector == "lora":
        expected |= lora_names(projector_layers)
    if projector == "full":
        expected |= {f"base_model.model.{p}" for p in projector_full}
    assert trainable(peft_model) == expected
    counts = {c.component: c for c in count_parameters(peft_model, fam)}
    assert (counts["vision"].trainable > 0) == (vision == "lora")
    assert (counts["projector"].trainable > 0) == (projector != "frozen")
    assert counts["total"].trainable == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


def test_lora_starts_exactly_at_the_base_model(tiny):
    batch = {"input_ids": torch.tensor([[1, 50, 60, 70, 2]])}
    with torch.no_grad():
        before = tiny.model(**batch).logits
        model = apply_lora(tiny.model, tiny.family, LoraConfig(dropout=0.0))
        after = model(**batch).logits
    assert torch.equal(before, after)  # B = 0 at init


def test_target_matching_nothing_is_an_error(tiny):
    with pytest.raises(MmloraError, match=r"\['qkv_proj'\] match no linear layer.*Available: down_proj"):
        apply_lora(tiny.model, tiny.family, LoraConfig(targets=["q_proj", "qkv_proj"]))


def test_subset_of_targets(tiny):
    model = apply_lora(tiny.model, tiny.family, LoraConfig(targets=["q_proj", "v_proj"]))
    assert trainable(model) == lora_names([m for m in LAYOUT["qwen2_vl"][0] if re.search(r"\.(q|v)_proj$", m)])


def test_regex_targets_match_full_names(tiny):
    cfg = LoraConfig(targets=r"model\.language_model\.layers\.1\.mlp\..*")
    adapted = resolve_adapted_modules(tiny.model, tiny.family, cfg)
    assert adapted.lora["language"] == [f"model.language_model.layers.1.mlp.{m}" for m in ("gate_proj", "up_proj", "down_proj")]


def test_regex_split_at_commas_by_an_override_is_rejoined(tiny):
    # `lora.targets=...\d{1,1}...` on the command line arrives split at the comma.
    cfg = LoraConfig(targets=[r".*layers\.\d{1", r"1}\.self_attn\.q_proj"])
    assert resolve_adapted_modules(tiny.model, tiny.family, cfg).lora["language"] == [
        "model.language_model.layers.0.self_attn.q_proj", "model.language_model.layers.1.self_attn.q_proj"]


def test_regex_matching_nothing_is_an_error(tiny):
    with pytest.raises(MmloraError, match="regex '.*lm_head' matches no linear layer of the language tower"):
        resolve_adapted_modules(tiny.model, tiny.family, LoraConfig(targets=".*lm_head"))


def test_exclude_by_short_name_and_by_regex(tiny):
    cfg = LoraConfig(vision="lora", exclude=["down_proj", r"model\.visual\.blocks\.0\..*"])
    adapted = resolve_adapted_modules(tiny.model, tiny.family, cfg)
    assert adapted.lora["language"] == [m for m in LAYOUT["qwen2_vl"][0] if not m.endswith("down_proj")]
    assert adapted.lora["vision"] == [m for m in LAYOUT["qwen2_vl"][1] if ".blocks.1." in m]


def test_exclude_matching_nothing_is_an_error(tiny):
    with pytest.raises(MmloraError, match="lora.exclude 'qkv' matches none"):
        resolve_adapted_modules(tiny.model, tiny.family, LoraConfig(exclude=["qkv"]))


def test_renamed_module_path_is_a_clear_error(tiny):
    import dataclasses

    renamed = dataclasses.replace(tiny.family, language_model="model.text_model")
    with pytest.raises(MmloraError, match="no module 'model.text_model'.*may have renamed it"):
        apply_lora(tiny.model, renamed, LoraConfig())


def test_rslora_dora_and_init_reach_peft(tiny):
    model = apply_lora(tiny.model, tiny.family, LoraConfig(use_rslora=True, use_dora=True, init="gaussian",
                                                           bias="lora_only", r=4, alpha=8))
    config = model.peft_config["default"]
    assert config.use_rslora and config.use_dora and config.init_lora_weights == "gaussian"
    layer = model.base_model.model.model.language_model.layers[0].self_attn.q_proj
    assert layer.scaling["default"] == pytest.approx(8 / 4**0.5)
    assert "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_magnitude_vector.default.weight" \
        in trainable(model)
    assert "base_model.model.model.language_model.layers.0.self_attn.q_proj.base_layer.bias" in trainable(model)


def test_recipe_override_regex_with_a_comma_survives_the_parser(tiny):
    from mmlora.config.loading import load_recipe

    recipe = load_recipe("tiny_vqa", [r"lora.targets=.*layers\.\d{1,1}\.mlp\.up_proj"])
    assert resolve_adapted_modules(tiny.model, tiny.family, recipe.lora).lora["language"] == [
        "model.language_model.layers.0.mlp.up_proj", "model.language_model.layers.1.mlp.up_proj"]
    with pytest.raises(MmloraError, match="is not a valid regex"):
        load_recipe("tiny_vqa", ["lora.targets=(q_proj"])
