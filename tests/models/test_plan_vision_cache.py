"""`mmlora plan`'s vision-cache estimate equals what the cache really stores."""

import math

import pytest
import torch
from PIL import Image

from mmlora.config.loading import load_recipe
from mmlora.data.collate import generation_batch
from mmlora.data.samples import Sample, user_turn
from mmlora.models.families import family_for_model_type
from mmlora.models.loading import load_model_and_processor
from mmlora.models.plan import feature_bytes_per_image, make_plan, vision_cache_lines, visual_token_table
from mmlora.models.published import resolve_config
from mmlora.models.vision_cache import install_vision_cache, open_store


@pytest.mark.parametrize("recipe_name", ["tiny_vqa", "tiny_qwen3_vl_vqa", "tiny_gemma3_vqa"])
def test_plan_bytes_per_image_equal_the_stored_entry(recipe_name, tmp_path):
    recipe = load_recipe(recipe_name, ["lora.projector=frozen"])
    plan = make_plan(recipe)
    tokens = next(n for label, n in plan.visual_tokens if "max_pixels" in label)
    loaded = load_model_and_processor(recipe.model, device="cpu")
    model = loaded.model.eval()
    store = open_store(model, loaded.family, {}, str(tmp_path), 1 << 30)
    install_vision_cache(model, loaded.family, store)
    side = math.isqrt(recipe.model.max_pixels)
    with torch.no_grad():
        model(**generation_batch(loaded.processor, [Sample([Image.new("RGB", (side, side), "red")],
                                                            [user_turn("What?")], "x")]))
    element = next(model.parameters()).element_size()
    assert store.stats.ram_bytes == feature_bytes_per_image(plan.config, tokens, element)


def test_plan_prints_the_cache_size_of_qwen2_vl_2b_at_448px():
    # 448x448 px = 256 visual tokens (28 px each), hidden size 1536, bf16: 256 * 1536 * 2 bytes.
    recipe = load_recipe("tiny_vqa", ["model.name=Qwen/Qwen2-VL-2B-Instruct", "model.dtype=bfloat16",
                                      "model.max_pixels=200704", "lora.projector=frozen"])
    resolved = resolve_config(recipe.model)
    family = family_for_model_type(resolved.config.model_type)
    rows, _ = visual_token_table(recipe, family, resolved.config, resolved.source)
    tokens = next(n for label, n in rows if "max_pixels" in label)
    text = vision_cache_lines(recipe, family, resolved.config, tokens, 2)
    assert "per image at max_pixels  768.0 KB (256 tokens)" in text
    assert "5,461 images fit train.vision_cache_memory=4GiB" in text
    trained = load_recipe("tiny_vqa")  # lora.projector: full
    assert vision_cache_lines(trained, family, resolved.config, tokens, 2).startswith(
        "vision feature cache: off (lora.projector=full")
