"""`mmlora plan`: counts from the config alone equal counts of the instantiated model."""

import pytest

from mmlora.config.loading import load_recipe
from mmlora.models.loading import load_model_and_processor
from mmlora.models.lora import apply_lora, save_adapter
from mmlora.models.plan import format_plan, make_plan

# family -> (vision prefix, projector prefixes), as module names of the loaded model
PARTS = {
    "qwen2_vl": ("model.visual.", ("model.visual.merger.",)),
    "qwen2_5_vl": ("model.visual.", ("model.visual.merger.",)),
    "qwen3_vl": ("model.visual.", ("model.visual.merger.", "model.visual.deepstack_merger_list.")),
    "llava": ("model.vision_tower.", ("model.multi_modal_projector.",)),
    "llava_next": ("model.vision_tower.", ("model.multi_modal_projector.",)),
    "idefics3": ("model.vision_model.", ("model.connector.",)),
    "gemma3": ("model.vision_tower.", ("model.multi_modal_projector.",)),
    "paligemma": ("model.vision_tower.", ("model.multi_modal_projector.",)),
}
TINY_RECIPES = ["tiny_vqa", "tiny_qwen2_5_vl_vqa", "tiny_qwen3_vl_vqa", "tiny_llava_vqa", "tiny_llava_next_vqa",
                "tiny_smolvlm_vqa", "tiny_gemma3_vqa", "tiny_paligemma_vqa"]


def counted(model, family_name) -> dict[str, tuple[int, int]]:
    """(trainable, total) per component of an instantiated PEFT model, by name prefix. PEFT's
    frozen copy of a fully trained module (`original_module`) is not part of the model."""
    vision, projector = PARTS[family_name]
    out = {"vision": [0, 0], "projector": [0, 0], "language": [0, 0]}
    for name, param in model.named_parameters():
        if ".original_module." in name:
            continue
        plain = name.removeprefix("base_model.model.")
        part = "projector" if plain.startswith(projector) else "vision" if plain.startswith(vision) else "language"
        out[part][0] += param.numel() if param.requires_grad else 0
        out[part][1] += param.numel()
    return {k: tuple(v) for k, v in out.items()}


@pytest.mark.parametrize("overrides", [[], ["lora.vision=lora", "lora.use_dora=true", "lora.projector=frozen"]],
                         ids=["recipe", "vision-dora"])
@pytest.mark.parametrize("recipe_name", TINY_RECIPES)
def test_plan_counts_equal_the_instantiated_model(recipe_name, overrides):
    recipe = load_recipe(recipe_name, overrides)
    plan = make_plan(recipe)
    loaded = load_model_and_processor(recipe.model, device="cpu")
    model = apply_lora(loaded.model, loaded.family, recipe.lora)
    expected = counted(model, loaded.family.name)
    table = format_plan(plan, recipe)
    for part, (trainable, total) in expected.items():
        row = plan.count(part)
        assert (row.trainable, row.total) == (trainable, total), part
        line = next(line for line in table.splitlines() if line.startswith(part + " "))
        assert f"{trainable:,}" in line and f"{total:,}" in line
    assert plan.count("total").total == sum(t for _, t in expected.values())


def test_plan_adapter_size_is_the_saved_adapter_size(tmp_path):
    recipe = load_recipe("tiny_llava_vqa", ["lora.vision=lora"])
    plan = make_plan(recipe)
    loaded = load_model_and_processor(recipe.model, device="cpu")
    save_adapter(apply_lora(loaded.model, loaded.family, recipe.lora), tmp_path)
    on_disk = (tmp_path / "adapter_model.safetensors").stat().st_size
    assert plan.adapter_bytes <= on_disk <= plan.adapter_bytes + 32_000  # + the safetensors header


def test_plan_visual_tokens_follow_the_pixel_bounds():
    plan = make_plan(load_recipe("tiny_vqa"))  # min 56x56, max 224x224, 28x28 px per token
    assert plan.visual_tokens[:2] == [("56x56 (min_pixels)", 4), ("224x224 (max_pixels)", 64)]
    assert not plan.visual_note
    fixed = make_plan(load_recipe("tiny_gemma3_vqa"))
    assert {tokens for _, tokens in fixed.visual_tokens} == {4} and "fixed resolution" in fixed.visual_note


def test_plan_cli_prints_the_table(capsys):
    from mmlora.cli import main

    code = main(["plan", "tiny_paligemma_vqa", "lora.r=4"])  # the CLI's entry point, in this process
    printed = capsys.readouterr()
    assert code == 0, printed.err
    for text in ("family paligemma", "trainable", "adapter on disk", "visual tokens per image"):
        assert text in printed.out


def test_plan_shows_visual_tokens_of_each_source_with_its_own_bounds(monkeypatch):
    """A mixture source's min/max_pixels: its own table, as the image processor resizes at those
    bounds; the memory estimate takes the largest per-image count of all."""
    from PIL import Image

    from mmlora.data.scan import load_data_processor
    from mmlora.models import plan as plan_module

    train = "[{path: asset://demo/vqa_train.jsonl, max_pixels: 3136}, {path: x.jsonl, min_pixels: 200704, max_pixels: 401408}]"
    recipe = load_recipe("tiny_vqa", [f"data.train={train}"])
    plan = make_plan(recipe)
    assert [(label, bounds) for label, bounds, _ in plan.source_tokens] == [
        ("data.train[0]: asset://demo/vqa_train.jsonl", (3136, 3136)), ("data.train[1]: x.jsonl", (200704, 401408))]
    image_processor = load_data_processor(recipe.model).image_processor
    for _, (low, high), table in plan.source_tokens:
        for label, tokens in table:
            size = tuple(int(n) for n in label.split()[0].split("x"))
            grid = image_processor(images=[Image.new("RGB", size)], return_tensors="pt",
                                   size={"shortest_edge": low, "longest_edge": high})["image_grid_thw"]
            assert tokens == int(grid.prod()) // 4, (label, low, high)  # 2x2 patches merge into one token
    assert dict(plan.source_tokens[1][2])["633x633 (max_pixels)"] == 484  # 22x22 merged tokens
    seen = []  # the visual tokens per image the memory estimate is made with
    real = plan_module.estimate_memory
    monkeypatch.setattr(plan_module, "estimate_memory", lambda *a, **k: seen.append(k["visual_tokens"]) or real(*a, **k))
    text = format_plan(plan, recipe)
    assert "visual tokens per image of data.train[1]: x.jsonl (its min_pixels=200704, max_pixels=401408):" in text
    assert seen[0] == 484 > dict(plan.visual_tokens)["224x224 (max_pixels)"] == 64
