"""Every supported family through its offline tiny twin: detection, module paths, prompt
expansion (checked against transformers' own processors where they build without torchvision),
the label mask, a short fine-tune, batched generation, merge and plain-PEFT adapter loading."""

import json
import shutil

import pytest
import torch
from PIL import Image

from mmlora.config.loading import load_recipe
from mmlora.config.paths import assets_dir, shipped_recipes
from mmlora.config.schema import ModelConfig
from mmlora.data.collate import IGNORE_INDEX, TrainingCollator, encode_for_training, generation_batch
from mmlora.data.samples import Sample, assistant_turn, user_turn
from mmlora.models.families import FAMILIES, find_module, projector_modules
from mmlora.models.loading import detect_family, load_model_and_processor
from mmlora.models.lora import component_of

from mmlora.models.tiny import TINY_MODELS, build_tiny_model, tiny_dir, write_tiny_assets

# family -> (tiny id, tiny recipe, trained text of a two-turn chat, visual tokens of a 140x112 image)
CASES = {
    "qwen2_vl": ("tiny/qwen2-vl", "tiny_vqa", "red<|im_end|>white<|im_end|>", 20),
    "qwen2_5_vl": ("tiny/qwen2.5-vl", "tiny_qwen2_5_vl_vqa", "red<|im_end|>white<|im_end|>", 20),
    "qwen3_vl": ("tiny/qwen3-vl", "tiny_qwen3_vl_vqa", "red<|im_end|>white<|im_end|>", 16),
    "llava": ("tiny/llava", "tiny_llava_vqa", " red</s> white</s>", 16),
    "llava_next": ("tiny/llava-next", "tiny_llava_next_vqa", " red</s> white</s>", 70),
    "idefics3": ("tiny/smolvlm", "tiny_smolvlm_vqa", " red<end_of_utterance> white<end_of_utterance>", 20),
    "gemma3": ("tiny/gemma3", "tiny_gemma3_vqa", "red<end_of_turn>white<end_of_turn>", 4),
    "paligemma": ("tiny/paligemma", "tiny_paligemma_vqa", "red<eos>", 16),  # one prompt, one answer
}
# 140x112: Qwen2 28-px tokens 5x4; Qwen3 32-px tokens 4x4 (rounded); LLaVA 56 px / 14 = 4x4;
# LLaVA-NeXT 16 base + 112x112 grid (8x8 patches) cropped to 6 rows + 6 newlines;
# SmolVLM longest edge 112 -> 2x2 tiles + global, 4 tokens each; Gemma 3 4 pooled tokens;
# PaliGemma 56 px / 14 = 4x4.
FAMILY_NAMES = [f.name for f in FAMILIES]


def family(name):
    return next(f for f in FAMILIES if f.name == name)


def load_tiny(name, max_pixels=None):
    model_id, recipe_name, *_ = CASES[name]
    recipe = load_recipe(recipe_name, ["data.train=x"])
    cfg = ModelConfig(name=model_id, min_pixels=recipe.model.min_pixels,
                      max_pixels=max_pixels or recipe.model.max_pixels)
    return load_model_and_processor(cfg, device="cpu")


def test_every_family_has_a_tiny_twin_and_a_tiny_recipe():
    assert set(CASES) == set(FAMILY_NAMES)
    assert len(set(FAMILIES)) == len(FAMILIES)  # hashable, distinct
    model_types = [t for f in FAMILIES for t in f.model_types]
    assert len(model_types) == len(set(model_types))  # detection is unambiguous
    assert {c[0] for c in CASES.values()} == set(TINY_MODELS)
    shipped = {p.stem for p in shipped_recipes()}
    assert {c[1] for c in CASES.values()} <= shipped


def test_real_family_recipes_name_a_shipped_tiny_twin():
    import re

    twins = {}
    for path in shipped_recipes():
        found = re.search(r"Offline twin:\s*#\s*(\w+)\.yaml", path.read_text())
        if found:
            twins[path.stem] = found.group(1)
            assert load_recipe(found.group(1)).model.name in TINY_MODELS, path.stem
    assert set(twins.values()) == {c[1] for c in CASES.values()} - {"tiny_vqa"}


@pytest.mark.parametrize("model_id", sorted(TINY_MODELS))
def test_shipped_tiny_assets_are_what_the_code_builds(model_id, tmp_path):
    write_tiny_assets(model_id, tmp_path)
    shipped = sorted(p.name for p in tiny_dir(model_id).iterdir())
    assert shipped == sorted(p.name for p in tmp_path.iterdir())
    for name in shipped:
        assert (tmp_path / name).read_bytes() == (tiny_dir(model_id) / name).read_bytes(), name


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_family_detected_from_config_and_parts_cover_the_model(name):
    model_id = CASES[name][0]
    fam = detect_family(model_id, ModelConfig(name=model_id))
    assert fam.name == name
    model = build_tiny_model(model_id)
    for path in (fam.vision_tower, fam.language_model, *projector_modules(model, fam)):
        find_module(model, path, fam)
    sizes = {"vision": 0, "projector": 0, "language": 0}
    for param_name, param in model.named_parameters():
        sizes[component_of(param_name, fam)] += param.numel()
    assert all(sizes.values()), sizes
    assert sum(sizes.values()) == sum(p.numel() for p in model.parameters())


def test_smolvlm2_model_type_uses_the_idefics3_layout(tmp_path):
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = json.loads((tiny_dir("tiny/smolvlm") / "config.json").read_text())
    config.update(model_type="smolvlm", architectures=["SmolVLMForConditionalGeneration"])
    config["vision_config"]["model_type"] = "smolvlm_vision"
    (tmp_path / "config.json").write_text(json.dumps(config))
    fam = detect_family(str(tmp_path), ModelConfig(name=str(tmp_path)))
    model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(tmp_path))
    assert fam.name == "idefics3" and type(model).__name__ == "SmolVLMForConditionalGeneration"
    for path in (fam.vision_tower, fam.language_model, *fam.projector):
        find_module(model, path, fam)


def test_image_tokens_survive_pickling_for_dataloader_workers():
    import copy
    import pickle

    from mmlora.models.families import ImageTokens

    tokens = ImageTokens(2, "<a><b>")
    for clone in (pickle.loads(pickle.dumps(tokens)), copy.deepcopy(tokens)):
        assert (clone, clone.text) == (2, "<a><b>")


def trained_text(processor, example) -> str:
    return processor.decode([t for t, lab in zip(example.input_ids, example.labels) if lab != IGNORE_INDEX],
                            skip_special_tokens=False)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_label_mask_trains_exactly_the_assistant_turns(name):
    _, _, expected, image_tokens = CASES[name]
    processor = load_tiny(name).processor
    turns = [user_turn("What color is the shape?"), assistant_turn("red")]
    if name != "paligemma":
        turns += [{"role": "user", "content": [{"type": "text", "text": "And the background?"}]},
                  assistant_turn("white")]
    example = encode_for_training(processor, Sample([Image.new("RGB", (140, 112), "red")], turns, "t"), 512)
    assert trained_text(processor, example) == expected
    assert example.input_ids.count(processor.image_token_id) == image_tokens
    for token, label in zip(example.input_ids, example.labels):
        assert label in (IGNORE_INDEX, token)


REAL_PROCESSORS = {
    "llava": lambda ip, tok: __import__("transformers").LlavaProcessor(
        ip, tok, patch_size=14, vision_feature_select_strategy="default", num_additional_image_tokens=1),
    "llava_next": lambda ip, tok: __import__("transformers").LlavaNextProcessor(
        ip, tok, patch_size=14, vision_feature_select_strategy="default", num_additional_image_tokens=1),
    "idefics3": lambda ip, tok: __import__("transformers").Idefics3Processor(ip, tok, image_seq_len=4),
    "gemma3": lambda ip, tok: __import__("transformers").Gemma3Processor(ip, tok, image_seq_length=4),
    "paligemma": lambda ip, tok: __import__("transformers").PaliGemmaProcessor(ip, tok),
}


@pytest.mark.parametrize("name", sorted(REAL_PROCESSORS))
def test_prompt_expansion_matches_the_transformers_processor(name):
    """Where transformers' processor builds without torchvision, mmlora's inputs are identical."""
    import copy

    processor = load_tiny(name).processor
    image_processor = copy.deepcopy(processor.image_processor)
    image_processor.image_seq_length = 16  # PaliGemma's processor reads it from its image processor
    real = REAL_PROCESSORS[name](image_processor, copy.deepcopy(processor.tokenizer))
    for size in ((140, 112), (112, 168), (300, 120)):
        image = Image.new("RGB", size, "blue")
        prompt = processor.render([user_turn("What color is the shape?")], add_generation_prompt=True)
        if name == "paligemma":  # its processor adds the image tokens, <bos> and "\n" itself
            theirs = real(text="<image>" + prompt.split("<bos>", 1)[1].rstrip("\n"), images=[image], return_tensors="pt")
        else:
            theirs = real(text=prompt, images=[image], return_tensors="pt")
        mine = processor.encode(prompt, [image])
        assert mine.input_ids == theirs["input_ids"][0].tolist(), size
        for key, tensor in mine.vision_inputs.items():
            assert torch.equal(tensor, theirs[key]), (size, key)


def test_paligemma_refuses_multi_turn_and_system_prompts():
    from mmlora.errors import MmloraError

    processor = load_tiny("paligemma").processor
    with pytest.raises(MmloraError, match="one prompt and one answer"):
        processor.render([user_turn("a"), assistant_turn("b"), user_turn("c", n_images=0)])
    with pytest.raises(MmloraError, match="no system prompt"):
        processor.render([{"role": "system", "content": "be brief"}, user_turn("a")])


# ---------------------------------------------------------------------------------------------
# A short fine-tune per family, shared by the tests below (module scope: one run per family).


def small_train_file(tmp_path, rows: int = 8):
    demo = assets_dir() / "demo"
    lines = (demo / "vqa_train.jsonl").read_text().splitlines()[:rows]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, demo


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def run(request, tmp_path_factory):
    from mmlora.training.train import train

    name = request.param
    tmp = tmp_path_factory.mktemp(name)
    train_file, demo = small_train_file(tmp)
    recipe = load_recipe(CASES[name][1], [
        f"data.train={train_file}", f"data.image_root={demo}", f"train.output_dir={tmp / 'run'}",
        "train.max_steps=8", "train.batch_size=2", "train.logging_steps=1", "train.save_steps=0",
        "train.eval_strategy=never", "eval.generate_at_end=false", "train.warmup_ratio=0",
    ])
    loaded = load_model_and_processor(recipe.model, device="cpu")
    processor = loaded.processor
    from mmlora.data.loading import load_samples

    samples = load_samples(str(train_file), recipe.data, recipe.task)
    batch = TrainingCollator(processor)([encode_for_training(processor, s, 256) for s in samples])
    with torch.no_grad():
        loss_before = loaded.model(**batch).loss.item()
    result = train(recipe, loaded=loaded)
    result.model.eval()
    with torch.no_grad():
        output = result.model(**batch)
    logits, loss_after = output.logits, output.loss.item()
    return {"name": name, "recipe": recipe, "result": result, "batch": batch, "logits": logits,
            "samples": samples, "loss": (loss_before, loss_after), "tmp": tmp}


@pytest.mark.slow
def test_short_finetune_lowers_the_training_loss(run):
    before, after = run["loss"]
    assert after < 0.8 * before, f"{run['name']}: loss {before:.3f} -> {after:.3f}"
    assert (run["result"].output_dir / "adapted_modules.json").is_file()


@pytest.mark.slow
def test_batched_generation_equals_one_by_one(run):
    from mmlora.evaluation.generate import generate_answers

    model, processor = run["result"].model, run["result"].loaded.processor
    # different image sizes and prompt lengths, so the batch is left padded
    samples = [Sample([Image.new("RGB", size, colour)], [user_turn(question)], "g") for size, colour, question in (
        ((112, 112), "red", "What color is the shape?"), ((140, 112), "blue", "Q?"),
        ((112, 168), "green", "What color is the background of this picture?"))]
    batched = generate_answers(model, processor, samples, batch_size=3, max_new_tokens=4, first_line=False)
    single = [generate_answers(model, processor, [s], batch_size=1, max_new_tokens=4, first_line=False)[0]
              for s in samples]
    assert batched == single
    assert generation_batch(processor, samples)["attention_mask"][:, 0].tolist().count(0) >= 1


@pytest.mark.slow
def test_saved_adapter_loads_with_plain_peft(run):
    from peft import PeftModel

    model_id = CASES[run["name"]][0]
    reloaded = PeftModel.from_pretrained(build_tiny_model(model_id), run["result"].output_dir).eval()
    with torch.no_grad():
        got = reloaded(**run["batch"]).logits
    torch.testing.assert_close(got, run["logits"], rtol=0, atol=1e-5)


def assert_merged_weights_are_base_plus_adapter(peft_model, merged) -> None:
    """Every adapted weight is W + scale * B A to fp32 rounding (2 ulp), computed here in float64;
    every fully trained module is the trained copy, bit for bit."""
    from peft.utils import ModulesToSaveWrapper

    state = merged.state_dict()
    lora_layers = full = 0
    for name, module in peft_model.named_modules():
        plain = name.removeprefix("base_model.model.")
        if isinstance(module, ModulesToSaveWrapper):
            for key, param in module.modules_to_save["default"].state_dict().items():
                assert torch.equal(state[f"{plain}.{key}"], param), f"{plain}.{key}"
            full += 1
        elif hasattr(module, "lora_A") and "default" in module.lora_A:
            a, b = module.lora_A["default"].weight.double(), module.lora_B["default"].weight.double()
            scale = module.scaling["default"]
            base, delta = module.base_layer.weight.double(), scale * (b @ a)
            # fp32 error bounds: the rank-r dot products of B A (r + 1 roundings of sum |b a|),
            # then the sum with W (one rounding).
            rank = a.shape[0]
            bound = 2**-23 * (base.abs() + delta.abs()) + (rank + 1) * 2**-24 * scale * (b.abs() @ a.abs())
            assert ((state[f"{plain}.weight"].double() - (base + delta)).abs() <= bound).all(), plain
            lora_layers += 1
    assert lora_layers == len(peft_model.mmlora_adapted.lora_modules)
    assert full == len(peft_model.mmlora_adapted.full)


def assert_logits_match(got, expected) -> None:
    """Equal within 1e-5 of the logits' scale. The merged weights round W + sBA once more than
    base + adapter does: at the tiny models' logit scale (~10, with their wide init) that alone
    moves logits by up to ~3e-5 in fp32, even evaluated in float64."""
    scale = expected.abs().max().item()
    assert (got - expected).abs().max().item() <= 1e-5 * max(1.0, scale)


@pytest.mark.slow
def test_merge_equals_base_plus_adapter_and_reloads_from_disk(run):
    from transformers import AutoModelForImageTextToText

    from mmlora.models.merge import merge_adapter

    out = run["tmp"] / "merged"
    merged = merge_adapter(run["result"].output_dir, out, dtype="fp32")
    assert_merged_weights_are_base_plus_adapter(run["result"].model, merged.model)
    with torch.no_grad():
        got = merged.model(**run["batch"]).logits
    assert_logits_match(got, run["logits"])
    reloaded = AutoModelForImageTextToText.from_pretrained(out).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**run["batch"]).logits, got)
    from_disk = load_model_and_processor(ModelConfig(name=str(out), min_pixels=run["recipe"].model.min_pixels,
                                                     max_pixels=run["recipe"].model.max_pixels), device="cpu")
    assert from_disk.family.name == run["name"]
    assert from_disk.processor.chat_template == run["result"].loaded.processor.chat_template
    shutil.rmtree(out)
