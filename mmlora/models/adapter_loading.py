"""A base model with a saved adapter merged in, for inference, evaluation and `mmlora merge`.

Which base and which image bounds: explicit flags first, else the adapter's saved recipe, else
the bounds a saved folder records (mmlora.json, mmlora/models/processor_files.py), else the
defaults. The adapter is checked against the base before its weights are applied
(mmlora/models/adapter_fit.py) and merged, so inference has no added latency.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from mmlora.config.schema import ModelConfig
from mmlora.errors import MmloraError
from mmlora.models.adapter_fit import adapter_base_model, check_adapter_family, check_adapter_fits


def model_config_for(model: str | None, adapter: str | None, min_pixels, max_pixels) -> ModelConfig:
    """Model settings: explicit flags, else the adapter's recipe, else the bounds a saved model
    folder records (mmlora.json: a merged model keeps its trained bounds), else the defaults."""
    from mmlora.models.processor_files import recorded_bounds

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
    it was trained on another base: mmlora/models/adapter_fit.py). Returns (model, LoadedModel)."""
    from mmlora.models.loading import detect_family, load_model_and_processor

    if adapter:
        check_adapter_family(adapter, detect_family(cfg.name, cfg), cfg.name)  # before the weights load
    loaded = load_model_and_processor(cfg, device=device)
    net = loaded.model
    if adapter:
        from mmlora.models.lora import load_adapter

        check_adapter_fits(adapter, net, cfg.name)
        net = load_adapter(net, adapter).merge_and_unload()
    return net, loaded
