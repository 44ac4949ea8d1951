"""`mmlora plan RECIPE`: what a recipe will train and what it costs, before any weights load.

The model is built from its config on the meta device (no memory, no weights read; for a hub id
only config.json and preprocessor_config.json are fetched, and where the hub id is neither cached
nor reachable, mmlora's shipped copy of its published files is read: mmlora/models/published.py), LoRA
is attached exactly as training attaches it, and the parameters are counted per component.
Visual tokens per image come from the family's own image processor and placeholder rule applied
to blank images of the bounding sizes.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from mmlora.config.schema import Recipe
from mmlora.config.sizes import parse_bytes
from mmlora.config.sources import data_sources, resolve_bounds
from mmlora.models.lora import (
    ParameterCount, apply_lora, count_parameters, format_adapted_modules, format_parameter_table,
)
from mmlora.models.memory import QUANTIZED_BYTES, estimate_memory, format_estimate, format_step_time


@dataclass
class Plan:
    model: str
    family: str
    counts: list[ParameterCount]
    adapted: object
    adapter_bytes: int
    weights_bytes: int
    visual_tokens: list[tuple[str, int]] = field(default_factory=list)
    visual_note: str = ""
    source_note: str = "config only, no weights read"
    base_parameters: int = 0
    """Parameters of the checkpoint itself, before LoRA (tied weights once, as safetensors stores them)."""
    family_spec: object = None
    config: object = None
    source_tokens: list = field(default_factory=list)
    """Visual tokens per image of each data source with its own min/max_pixels (`source_token_tables`)."""
    meta_model: object = None
    """The meta-device model with LoRA attached, which the memory estimate reuses (building it
    again cost as much as the rest of `mmlora plan`)."""

    def count(self, component: str) -> ParameterCount:
        return next(c for c in self.counts if c.component == component)


def _meta_model(config, dtype):
    import torch
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(config, dtype=dtype)


def base_parameter_count(model) -> int:
    """Parameters of the checkpoint itself (tied weights once, as its safetensors store them);
    `model` is the meta-device model before LoRA is attached."""
    return sum(p.numel() for p in model.parameters())


def _weights_bytes(model, adapted, quantization: str) -> int:
    """Memory of the base weights at the recipe's dtype (quantised language layers if QLoRA)."""
    quantized = {f"base_model.model.{n}.base_layer.weight" for n in adapted.lora["language"]}
    total = 0.0
    for name, param in model.named_parameters():
        if param.requires_grad:
            continue
        per = QUANTIZED_BYTES[quantization] if quantization != "none" and name in quantized else param.element_size()
        total += param.numel() * per
    return int(total)


def visual_token_table(recipe: Recipe, family, config,
                       source: str | None = None) -> tuple[list[tuple[str, int]], str]:
    """Visual tokens of blank images at the bounding sizes and two photo sizes; the image
    processor is read from `source` (default: the recipe's model)."""
    from PIL import Image

    from mmlora.models.loading import _hub_kwargs, _source_dir
    from mmlora.models.processor import load_image_processor

    m = recipe.model
    try:
        image_processor = load_image_processor(source or _source_dir(m.name), family, m.min_pixels, m.max_pixels,
                                               **_hub_kwargs(m))
    except (OSError, ValueError) as err:
        return [], f"visual tokens: unknown (no image processor settings: {err})"
    low, high = math.isqrt(m.min_pixels), math.isqrt(m.max_pixels)
    sizes = [(f"{low}x{low} (min_pixels)", (low, low)), (f"{high}x{high} (max_pixels)", (high, high)),
             ("640x480 photo", (640, 480)), ("4032x3024 photo", (4032, 3024))]
    rows = []
    for label, size in sizes:
        output = image_processor(images=[Image.new("RGB", size)], return_tensors="pt",
                                 **dict(family.image_processor_kwargs))
        rows.append((label, int(family.image_tokens(image_processor, config, output, 0))))
    fixed = not family.image_size_options(image_processor, m.min_pixels, m.max_pixels)
    note = "fixed resolution: model.min_pixels/max_pixels do not apply to this family" if fixed else ""
    return rows, note


def make_plan(recipe: Recipe) -> Plan:
    """Parameter counts per component, adapter size and visual tokens for `recipe`."""
    import torch

    from mmlora.models.families import family_for_model_type
    from mmlora.models.published import describe_source, resolve_config

    resolved = resolve_config(recipe.model)
    config = resolved.config
    family = family_for_model_type(config.model_type)
    dtype = getattr(torch, recipe.model.dtype if recipe.model.dtype != "auto" else "bfloat16")
    # The counts do not depend on the init, and PiSSA/OLoRA's decompositions need real weights.
    lora = dataclasses.replace(recipe.lora, init="default")
    model = _meta_model(config, dtype)
    base_parameters = base_parameter_count(model)
    model = apply_lora(model, family, lora)
    adapter_bytes = 0
    for name, param in model.named_parameters():
        if param.requires_grad:
            # PiSSA/OLoRA adapters are saved converted to rank 2r (lora.save_adapter).
            doubled = recipe.lora.init in ("pissa", "olora") and (".lora_A." in name or ".lora_B." in name)
            adapter_bytes += param.numel() * param.element_size() * (2 if doubled else 1)
    visual, note = visual_token_table(recipe, family, config, resolved.source)
    plan = Plan(recipe.model.name, family.name, count_parameters(model, family), model.mmlora_adapted,
                adapter_bytes, _weights_bytes(model, model.mmlora_adapted, recipe.model.quantization),
                visual, note, describe_source(resolved, recipe.model), base_parameters, family, config)
    plan.source_tokens = source_token_tables(recipe, family, config, resolved.source)
    plan.meta_model = model
    return plan


def source_token_tables(recipe: Recipe, family, config, source) -> list[tuple[str, tuple[int, int], list]]:
    """(entry, its bounds, visual-token table) for each data source with its own min/max_pixels."""
    tables = []
    for split in ("train", "eval"):
        value = getattr(recipe.data, split)
        for entry in (data_sources(value, f"data.{split}") if value else []):
            if entry.bounds() is None:
                continue
            low, high = resolve_bounds(entry.bounds(), (recipe.model.min_pixels, recipe.model.max_pixels))
            at_bounds = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, min_pixels=low,
                                                                              max_pixels=high))
            tables.append((f"{entry.label}: {entry.display}", (low, high),
                           visual_token_table(at_bounds, family, config, source)[0]))
    return tables


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GB"


def format_plan(plan: Plan, recipe: Recipe) -> str:
    m = recipe.model
    quant = f", {m.quantization} QLoRA" if m.quantization != "none" else ""
    lines = [
        f"model: {plan.model} (family {plan.family}; {plan.source_note})",
        format_adapted_modules(plan.adapted).replace(" (all names: adapted_modules.json in the output directory)", ""),
        "",
        format_parameter_table(plan.counts),
        "",
        f"base model:        {plan.base_parameters:,} parameters",
        f"adapter on disk:   {_size(plan.adapter_bytes)} (safetensors)",
        f"base weights:      {_size(plan.weights_bytes)} ({m.dtype}{quant})",
        f"visual tokens per image (min_pixels={m.min_pixels}, max_pixels={m.max_pixels}):",
    ]
    lines += [f"  {label:<24} {tokens:>6}" for label, tokens in plan.visual_tokens]
    if plan.visual_note:
        lines.append(f"  ({plan.visual_note})")
    for label, (low, high), table in plan.source_tokens:
        lines.append(f"visual tokens per image of {label} (its min_pixels={low}, max_pixels={high}):")
        lines += [f"  {row:<24} {tokens:>6}" for row, tokens in table]
    lines.append(memory_section(recipe, plan))
    visual = next((n for label, n in plan.visual_tokens if "max_pixels" in label), 0)
    lines.append(vision_cache_lines(recipe, plan.family_spec, plan.config, visual, _dtype(recipe).itemsize))
    return "\n".join(lines)


def memory_section(recipe: Recipe, plan: Plan) -> str:
    """Peak GPU memory per device at the recipe's batch and max_length, without and with
    gradient checkpointing (mmlora/models/memory.py)."""

    # The most visual tokens one image can take: at model.max_pixels or a data source's larger own.
    visual = max(n for rows in [plan.visual_tokens] + [t for _, _, t in plan.source_tokens]
                 for label, n in rows if "max_pixels" in label) if plan.visual_tokens else 0
    model, family = plan.meta_model, plan.family_spec
    estimates = [estimate_memory(recipe, visual_tokens=visual, gradient_checkpointing=ckpt, model=model)
                 for ckpt in (False, True)]
    return ("peak GPU memory per device (estimate; rows padded to data.max_length, logits for every "
            "token: an upper bound):\n") + "\n".join(
        format_estimate(e) for e in estimates) + "\n" + format_step_time(recipe, model, family, visual)


def _dtype(recipe: Recipe):
    import torch

    return getattr(torch, recipe.model.dtype if recipe.model.dtype != "auto" else "bfloat16")


# Vision feature cache (mmlora/models/vision_cache.py): one image's entry holds its visual tokens
# (at model.max_pixels, the largest image) times the language tower's hidden size (features are
# cached after the projector) in the model's dtype; Qwen3-VL adds one more such block per
# DeepStack layer. The safetensors header (~200 bytes per file) is left out.


def feature_bytes_per_image(config, visual_tokens: int, element_size: int) -> int:
    """Bytes of one cached image with `visual_tokens` tokens (see the comment above)."""
    text = getattr(config, "text_config", config)
    blocks = 1 + len(getattr(getattr(config, "vision_config", None), "deepstack_visual_indexes", None) or ())
    return visual_tokens * text.hidden_size * element_size * blocks


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
