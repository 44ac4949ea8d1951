"""Recipe pixel bounds win over a checkpoint's, in every layout a published checkpoint uses.

The layouts are those of the hub (issue #11): Qwen2-VL / Qwen2.5-VL publish top-level
`min_pixels` / `max_pixels`, Qwen3-VL a `size` dict, SmolVLM a `longest_edge` size; checkpoints
saved by transformers 4.4x-4.5x carry fast-processor dumps (both spellings, plus null-valued
keys), and transformers 5 writes a full processor's settings nested in processor_config.json.
Each test checks the image_grid_thw / tiles the image processor actually produces, through the
same loaders train, data check/preview, plan, eval and infer use.
"""

from __future__ import annotations

import json
import math
import shutil

import pytest
from PIL import Image

from mmlora.models.families import IDEFICS3, QWEN2_5_VL, QWEN2_VL, QWEN3_VL
from mmlora.models.processor import load_image_processor
from mmlora.models.tiny import tiny_dir

CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]

# preprocessor_config.json of Qwen/Qwen2-VL-2B-Instruct as published (Qwen2.5-VL-3B-Instruct's
# differs only in processor_class).
PUBLISHED_QWEN2_VL = {
    "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2,
    "merge_size": 2, "image_mean": CLIP_MEAN, "image_std": CLIP_STD,
    "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2VLProcessor",
}
# Qwen/Qwen3-VL-2B-Instruct: a size dict and the fast class name.
PUBLISHED_QWEN3_VL = {
    "size": {"longest_edge": 16777216, "shortest_edge": 65536}, "patch_size": 16,
    "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
    "processor_class": "Qwen3VLProcessor", "image_processor_type": "Qwen2VLImageProcessorFast",
}
# What save_pretrained of transformers 4.5x's Qwen2VLImageProcessorFast wrote (fine-tuned
# checkpoints on the hub): both spellings of the bounds and the fast processor's null options.
FAST_DUMP_QWEN2_VL = {
    "crop_size": None, "data_format": "channels_first", "default_to_square": True, "device": None,
    "disable_grouping": None, "do_center_crop": None, "do_convert_rgb": True, "do_normalize": True,
    "do_rescale": True, "do_resize": True, "image_mean": CLIP_MEAN,
    "image_processor_type": "Qwen2VLImageProcessorFast", "image_std": CLIP_STD,
    "input_data_format": None, "max_pixels": 12845056, "merge_size": 2, "min_pixels": 3136,
    "patch_size": 14, "processor_class": "Qwen2_5_VLProcessor", "resample": 3,
    "rescale_factor": 0.00392156862745098, "return_tensors": None,
    "size": {"longest_edge": 12845056, "shortest_edge": 3136}, "temporal_patch_size": 2,
}
# transformers 4.45-4.48's slow Qwen2VLImageProcessor dump: the bounds also inside `size`,
# under their own names.
OLD_DUMP_QWEN2_VL = {
    "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
    "image_mean": CLIP_MEAN, "image_processor_type": "Qwen2VLImageProcessor", "image_std": CLIP_STD,
    "max_pixels": 12845056, "merge_size": 2, "min_pixels": 3136, "patch_size": 14,
    "processor_class": "Qwen2VLProcessor", "resample": 3, "rescale_factor": 0.00392156862745098,
    "size": {"max_pixels": 12845056, "min_pixels": 3136}, "temporal_patch_size": 2,
}
# HuggingFaceTB/SmolVLM-256M-Instruct: longest edge 2048 in 512-px tiles.
PUBLISHED_SMOLVLM = {
    "do_convert_rgb": True, "do_image_splitting": True, "do_normalize": True, "do_pad": True,
    "do_rescale": True, "do_resize": True, "image_mean": [0.5] * 3,
    "image_processor_type": "Idefics3ImageProcessor", "image_std": [0.5] * 3,
    "max_image_size": {"longest_edge": 512}, "processor_class": "Idefics3Processor", "resample": 1,
    "rescale_factor": 0.00392156862745098, "size": {"longest_edge": 2048},
}

RECIPE_MIN, RECIPE_MAX = 3136, 401408  # the shipped qwen2_vl_2b_lora_vqa bounds


def checkpoint_with(tmp_path, twin: str, preprocessor: dict, processor_config: dict | None = None):
    """A copy of a tiny twin's folder whose image-processor files are `preprocessor`."""
    folder = tmp_path / twin
    shutil.copytree(tiny_dir(twin), folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    if processor_config is not None:
        (folder / "processor_config.json").write_text(json.dumps(processor_config))
    return folder


def visual_tokens(image_processor, size) -> tuple[list[int], int]:
    """(image_grid_thw, visual tokens) for a blank image of `size` (width, height)."""
    grid = image_processor(images=[Image.new("RGB", size)], return_tensors="pt")["image_grid_thw"][0]
    return grid.tolist(), int(grid.prod()) // image_processor.merge_size**2


@pytest.mark.parametrize("family, twin", [(QWEN2_VL, "tiny/qwen2-vl"), (QWEN2_5_VL, "tiny/qwen2.5-vl")])
@pytest.mark.parametrize("layout", ["published", "fast dump", "4.4x dump"])
def test_top_level_min_max_pixels_lose_to_the_recipe(tmp_path, family, twin, layout):
    """Issue #11: 15552 visual tokens for a 4032x3024 photo and 2691 for 1920x1080 where the
    recipe's max_pixels 401408 allows 494 and 480."""
    source = {"published": PUBLISHED_QWEN2_VL, "fast dump": FAST_DUMP_QWEN2_VL,
              "4.4x dump": OLD_DUMP_QWEN2_VL}[layout]
    folder = checkpoint_with(tmp_path, twin, source)
    image_processor = load_image_processor(str(folder), family, RECIPE_MIN, RECIPE_MAX)
    assert visual_tokens(image_processor, (4032, 3024)) == ([1, 38, 52], 494)
    assert visual_tokens(image_processor, (1920, 1080)) == ([1, 32, 60], 480)
    # The minimum too: 128 tokens' worth of pixels lifts a 56x56 image to 336x336 (144 tokens),
    # where the file's 3136 would leave it at 4.
    image_processor = load_image_processor(str(folder), family, 128 * 28 * 28, RECIPE_MAX)
    assert visual_tokens(image_processor, (56, 56)) == ([1, 24, 24], 144)


def test_full_processor_settings_in_processor_config_lose_to_the_recipe(tmp_path):
    """transformers 5 saves a full processor's image settings nested in processor_config.json."""
    nested = {"processor_class": "Qwen2VLProcessor",
              "image_processor": {**PUBLISHED_QWEN2_VL, "min_pixels": None, "max_pixels": None,
                                  "size": {"longest_edge": 12845056, "shortest_edge": 3136}}}
    folder = checkpoint_with(tmp_path, "tiny/qwen2-vl", PUBLISHED_QWEN2_VL, processor_config=nested)
    image_processor = load_image_processor(str(folder), QWEN2_VL, RECIPE_MIN, RECIPE_MAX)
    assert visual_tokens(image_processor, (4032, 3024)) == ([1, 38, 52], 494)


def test_qwen3_vl_size_dict_loses_to_the_recipe(tmp_path):
    """Qwen3-VL publishes `size` (min 65536 px); the recipe's 4096..524288 (32-px factor) wins."""
    folder = checkpoint_with(tmp_path, "tiny/qwen3-vl", PUBLISHED_QWEN3_VL)
    image_processor = load_image_processor(str(folder), QWEN3_VL, 4096, 524288)
    # 4032x3024 within 524288 px on a 32-px grid: 608x832 px -> a 38x52 grid of 16-px patches.
    assert visual_tokens(image_processor, (4032, 3024)) == ([1, 38, 52], 494)
    # 64x64 is 4096 px, the recipe's minimum (the file's 65536 would make it 256x256).
    assert visual_tokens(image_processor, (64, 64)) == ([1, 4, 4], 4)


def test_smolvlm_longest_edge_follows_max_pixels(tmp_path):
    """SmolVLM publishes longest_edge 2048 (4x4 tiles of 512); max_pixels 1048576 means 1024."""
    folder = checkpoint_with(tmp_path, "tiny/smolvlm", PUBLISHED_SMOLVLM)
    image_processor = load_image_processor(str(folder), IDEFICS3, 262144, 1048576)
    out = image_processor(images=[Image.new("RGB", (4032, 3024))], return_tensors="pt", return_row_col_info=True)
    assert (out["rows"][0][0], out["cols"][0][0]) == (2, 2)
    assert out["pixel_values"].shape[1] == 2 * 2 + 1  # tiles + the global view
    assert max(out["pixel_values"].shape[-2:]) == 512


def test_every_command_path_uses_the_recipe_bounds(tmp_path):
    """train/eval/infer (load_model_and_processor), data check/preview (load_data_processor) and
    plan (visual_token_table) on a checkpoint folder in the published Qwen2-VL layout."""
    from mmlora.config.schema import ModelConfig, Recipe
    from mmlora.data.scan import load_data_processor
    from mmlora.data.splitscan import VisualTokenCounter
    from mmlora.models.families import family_for_model_type
    from mmlora.models.loading import load_config, load_model_and_processor, save_tiny_model
    from mmlora.models.plan import visual_token_table

    folder = save_tiny_model("tiny/qwen2-vl", tmp_path / "ckpt")
    (folder / "preprocessor_config.json").write_text(json.dumps(PUBLISHED_QWEN2_VL))
    (folder / "processor_config.json").unlink(missing_ok=True)
    model_cfg = ModelConfig(name=str(folder), min_pixels=RECIPE_MIN, max_pixels=RECIPE_MAX)
    photo = [Image.new("RGB", (4032, 3024))]
    for processor in (load_model_and_processor(model_cfg, device="cpu").processor, load_data_processor(model_cfg)):
        text = processor.render([{"role": "user", "content": [{"type": "image"}]}])
        encoded = processor.encode(text, photo)
        assert encoded.image_grid_thw.tolist() == [[1, 38, 52]]
        assert encoded.input_ids.count(processor.image_token_id) == 494
        # The data pre-scan's count from header sizes (the max_length check before training).
        assert (VisualTokenCounter(processor)(4032, 3024), VisualTokenCounter(processor)(1920, 1080)) == (494, 480)
    recipe = Recipe(model=model_cfg)
    config = load_config(str(folder), model_cfg)
    rows, _ = visual_token_table(recipe, family_for_model_type(config.model_type), config)
    counts = dict(rows)
    assert counts["4032x3024 photo"] == 494
    side = math.isqrt(RECIPE_MAX)
    assert counts[f"{side}x{side} (max_pixels)"] * 28 * 28 <= RECIPE_MAX


@pytest.mark.parametrize("family_name", ["llava", "llava_next", "gemma3", "paligemma"])
def test_fixed_resolution_files_keep_their_size(family_name):
    """`size` as height/width (Gemma 3, PaliGemma) or CLIP's shortest_edge + crop (LLaVA): the
    model's resolution, which no recipe bound changes."""
    from mmlora.models.families import FAMILIES

    family = next(f for f in FAMILIES if f.name == family_name)
    folder = tiny_dir(family.tiny.model_id)
    published = json.loads((folder / "preprocessor_config.json").read_text())
    for bounds in ((3136, 401408), (784, 2000)):
        image_processor = load_image_processor(str(folder), family, *bounds)
        assert {k: v for k, v in dict(image_processor.size).items() if v is not None} == published["size"]
        pixels = image_processor(images=[Image.new("RGB", (640, 480))], return_tensors="pt")["pixel_values"]
        assert tuple(pixels.shape[-2:]) == (56, 56)
