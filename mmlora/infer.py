"""`mmlora infer`: one prompt about one image, with an optional LoRA adapter merged in."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from mmlora.config import ModelConfig
from mmlora.data import Sample, load_image, user_turn
from mmlora.errors import MmloraError


def adapter_base_model(adapter_dir: Path) -> str:
    """The base model an adapter was trained on, from its adapter_config.json."""
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.is_file():
        raise MmloraError(f"'{adapter_dir}' is not an adapter directory (no adapter_config.json).")
    base = json.loads(config_path.read_text()).get("base_model_name_or_path")
    if not base:
        raise MmloraError(f"{config_path} names no base model; pass --model.")
    return base


def model_config_for(model: str | None, adapter: str | None, min_pixels, max_pixels) -> ModelConfig:
    """Model settings: explicit flags, else the adapter's recipe, else the bounds a saved model
    folder records (mmlora.json: a merged model keeps its trained bounds), else the defaults."""
    from mmlora.processor_files import recorded_bounds

    cfg = ModelConfig()
    if adapter:
        recipe_path = Path(adapter) / "recipe.yaml"
        if recipe_path.is_file():
            saved = (yaml.safe_load(recipe_path.read_text()) or {}).get("model", {})
            cfg = ModelConfig(**{k: v for k, v in saved.items() if k in ModelConfig.__dataclass_fields__})
        elif bounds := recorded_bounds(adapter):
            cfg.min_pixels, cfg.max_pixels = bounds
        cfg.name = model or adapter_base_model(Path(adapter))
    elif model:
        cfg.name = model
        if bounds := recorded_bounds(model):
            cfg.min_pixels, cfg.max_pixels = bounds
    else:
        raise MmloraError("Give --model (hub id, local dir or tiny id) or --adapter DIR.")
    cfg.min_pixels = min_pixels or cfg.min_pixels
    cfg.max_pixels = max_pixels or cfg.max_pixels
    return cfg


def load_with_adapter(cfg: ModelConfig, adapter: str | None, device: str | None = None):
    """Load `cfg`'s model and processor and merge `adapter` into it (refused, in one line, when
    it was trained on another base: mmlora/adapter_fit.py). Returns (model, LoadedModel)."""
    from mmlora.adapter_fit import check_adapter_family, check_adapter_fits
    from mmlora.modeling import detect_family, load_model_and_processor

    if adapter:
        check_adapter_family(adapter, detect_family(cfg.name, cfg), cfg.name)  # before the weights load
    loaded = load_model_and_processor(cfg, device=device)
    net = loaded.model
    if adapter:
        from mmlora.lora import load_adapter

        check_adapter_fits(adapter, net, cfg.name)
        net = load_adapter(net, adapter).merge_and_unload()
    return net, loaded


def answer_one(model: str | None, adapter: str | None, image: str, prompt: str,
               max_new_tokens: int = 128, min_pixels: int | None = None,
               max_pixels: int | None = None) -> str:
    """Load the model (+ adapter, merged for zero added latency) and answer one prompt."""
    image_path = Path(image)
    if not image_path.is_file():
        raise MmloraError(f"Image '{image}' not found.")
    picture = load_image(image_path, where=str(image_path))  # fails fast, before loading weights
    # `<image>` in the prompt places the image (LLaVA writes `<image>\nQuestion`); else it goes first.
    sample = Sample([picture], [user_turn(prompt, 1, field="--prompt")], source=str(image_path))
    cfg = model_config_for(model, adapter, min_pixels, max_pixels)

    import torch

    from mmlora.generate import generate_answers

    if not torch.cuda.is_available():
        print("mmlora: no CUDA device visible; running on CPU.", file=sys.stderr)
    net, loaded = load_with_adapter(cfg, adapter)
    return generate_answers(net, loaded.processor, [sample], 1, max_new_tokens, first_line=False)[0]
