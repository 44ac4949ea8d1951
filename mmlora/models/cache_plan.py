"""`mmlora plan`'s vision-cache lines: how much disk and RAM cached image features take.

One image's entry holds its visual tokens (at model.max_pixels, the largest image) times the
language tower's hidden size (features are cached after the projector) in the model's dtype;
Qwen3-VL adds one more such block per DeepStack layer. Byte counts of the safetensors header
(~200 bytes per file) are left out.
"""

from __future__ import annotations

from mmlora.config.schema import Recipe
from mmlora.config.sizes import parse_bytes


def feature_bytes_per_image(config, visual_tokens: int, element_size: int) -> int:
    """Bytes of one cached image with `visual_tokens` tokens (see module docstring)."""
    text = getattr(config, "text_config", config)
    blocks = 1 + len(getattr(getattr(config, "vision_config", None), "deepstack_visual_indexes", None) or ())
    return visual_tokens * text.hidden_size * element_size * blocks


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


def vision_cache_lines(recipe: Recipe, family, config, visual_tokens: int, element_size: int) -> str:
    """The plan's section on train.vision_cache (sizes per image, per 10k images, RAM share)."""
    t = recipe.train
    if t.vision_cache == "off":
        return "vision feature cache: off (train.vision_cache=off)"
    trained = [f"lora.{part}={getattr(recipe.lora, part)}" for part in ("vision", "projector")
               if getattr(recipe.lora, part) != "frozen"]
    if trained:
        return f"vision feature cache: off ({' and '.join(trained)}: features change as they train)"
    if family.feature_layout is None:
        return f"vision feature cache: not available for {family.name} ({family.feature_cache_refusal})"
    if not visual_tokens:
        return "vision feature cache: size unknown (no visual token count)"
    per_image = feature_bytes_per_image(config, visual_tokens, element_size)
    budget = parse_bytes(t.vision_cache_memory, "train.vision_cache_memory")
    where = t.vision_cache_dir or "~/.cache/mmlora/vision-features"
    return (f"vision feature cache (train.vision_cache=auto; used when images repeat and the tower and "
            f"projector are frozen):\n"
            f"  per image at max_pixels  {_size(per_image)} ({visual_tokens} tokens)\n"
            f"  per 10,000 images        {_size(per_image * 10_000)} on disk in {where}\n"
            f"  in RAM                   {budget // per_image:,} images fit train.vision_cache_memory="
            f"{t.vision_cache_memory}")
