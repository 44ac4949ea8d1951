"""The train<->serve contract: the processor files every saved folder carries.

An adapter, a checkpoint and a merged model are each written with the preprocessing they were
trained with, stated in every place transformers 5.x reads it, so plain `AutoProcessor`,
`AutoImageProcessor` and `AutoTokenizer` (with or without torchvision), vLLM and mmlora itself
all reload the same inputs:

- `processor_config.json`: `processor_class`, the processor's own options (image_seq_length,
  patch_size, ...) and the trained image processor nested under `image_processor`. transformers
  reads this nested dict *before* `preprocessor_config.json` (image_processing_base /
  image_processing_auto: "nested config if found -> image processor config"), so it must hold
  the trained bounds: the family processor's own `save_pretrained` would write the checkpoint's
  defaults there and shadow the trained file.
- `preprocessor_config.json`: the same image processor, flat, with `processor_class`. Where the
  checkpoint states top-level `min_pixels` / `max_pixels` (Qwen2-VL's published format), they
  are written with the trained values as well: Qwen2VLImageProcessor lets them override `size`.
- `tokenizer_config.json` with `processor_class`: where AutoProcessor looks last; without it an
  adapter folder (no config.json) reloads as a bare tokenizer.
- `chat_template.jinja`: the template the answers were rendered with (mmlora's for LLaVA).
- `mmlora.json`: the base model (absolute path for local folders), its family and model type,
  and the recipe's `min_pixels` / `max_pixels`; `mmlora infer --model DIR` and `mmlora eval`
  use these bounds unless told otherwise, and adapters are checked against the family.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

RECORD_FILE = "mmlora.json"
VIDEO_FILE = "video_preprocessor_config.json"


def processor_class_name(processor) -> str | None:
    """The family processor's class name: the built processor's, else the checkpoint's
    processor_config.json, else transformers' mapping for the model type."""
    if processor.full_processor is not None:
        return type(processor.full_processor).__name__
    recorded = (processor.processor_config or {}).get("processor_class")
    if recorded:
        return recorded
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    model_type = getattr(processor.model_config, "model_type", None)
    return PROCESSOR_MAPPING_NAMES.get(model_type)


def _source_image_config(processor) -> dict:
    """The image processor config the processor was loaded from (what transformers reads:
    processor_config.json's nested dict, else preprocessor_config.json); {} when unreadable."""
    from transformers.image_processing_base import ImageProcessingMixin

    source = getattr(processor.tokenizer, "name_or_path", None)
    if not source:
        return {}
    try:
        return ImageProcessingMixin.get_image_processor_dict(source, local_files_only=True)[0]
    except Exception:  # noqa: BLE001 - nothing readable offline: write `size` only
        return {}


def image_processor_dict(image_processor, source_config: dict | None = None) -> dict[str, Any]:
    """The image processor's settings as a JSON dict. Where the checkpoint states the bounds as
    top-level `min_pixels` / `max_pixels` (Qwen2-VL's published format), those keys are written
    too, with the trained values: transformers lets them override `size` when loading, and
    readers of older versions read only them."""
    data = json.loads(image_processor.to_json_string())
    size = data.get("size") or {}
    top_level = {"min_pixels", "max_pixels"} & set(source_config or {})
    if top_level and {"shortest_edge", "longest_edge"} <= set(size):
        data["min_pixels"], data["max_pixels"] = size["shortest_edge"], size["longest_edge"]
    return data


def processor_config_dict(processor, image_dict: dict, processor_class: str | None) -> dict[str, Any]:
    """processor_config.json: the processor's options with the trained image processor nested."""
    if processor.full_processor is not None:
        data = json.loads(processor.full_processor.to_json_string())
    else:
        data = dict(processor.processor_config or {})
    data["image_processor"] = image_dict  # replaces the checkpoint's defaults (see module doc)
    if processor_class:
        data["processor_class"] = processor_class
    return data


def _update_json(path: Path, **values) -> None:
    data = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**data, **values}, indent=2, ensure_ascii=False) + "\n")


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_processor_files(processor, out_dir: str | Path) -> None:
    """Write the processor files described in the module docstring into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    processor_class = processor_class_name(processor)
    image_dict = image_processor_dict(processor.image_processor, _source_image_config(processor))
    _write_json(out_dir / "processor_config.json", processor_config_dict(processor, image_dict, processor_class))
    flat = {**image_dict, "processor_class": processor_class} if processor_class else image_dict
    _write_json(out_dir / "preprocessor_config.json", flat)
    processor.tokenizer.save_pretrained(out_dir)
    if processor_class:
        _update_json(out_dir / "tokenizer_config.json", processor_class=processor_class)
    (out_dir / "chat_template.jinja").write_text(processor.chat_template)
    stale = out_dir / "chat_template.json"  # transformers prefers .jinja; never leave two templates
    if stale.is_file():
        stale.unlink()
    _copy_video_config(processor, out_dir)
    if processor.record:
        write_record(out_dir, {**processor.record, "processor_class": processor_class})


def _copy_video_config(processor, out_dir: Path) -> None:
    """Without the full processor, carry the checkpoint's video processor file over unchanged
    (with it, processor_config.json already nests it): the folder stays loadable as a whole."""
    if processor.full_processor is not None:
        return
    source = Path(getattr(processor.tokenizer, "name_or_path", "") or "")
    video = source / VIDEO_FILE
    if video.is_file() and video.resolve() != (out_dir / VIDEO_FILE).resolve():
        shutil.copyfile(video, out_dir / VIDEO_FILE)


def model_record(name: str, family, model_config, min_pixels: int, max_pixels: int) -> dict[str, Any]:
    """What mmlora.json says about the model a processor was loaded for."""
    return {
        "base_model": resolve_model_name(name),
        "family": family.name,
        "model_type": getattr(model_config, "model_type", None),
        "min_pixels": min_pixels,
        "max_pixels": max_pixels,
    }


def resolve_model_name(name: str) -> str:
    """Local directories as absolute paths (so a saved adapter loads from any working
    directory); hub ids and built-in tiny ids unchanged."""
    from mmlora.models.tiny import is_tiny

    if is_tiny(name) or not Path(name).is_dir():
        return name
    return str(Path(name).resolve())


def write_record(out_dir: Path, record: dict) -> None:
    _write_json(Path(out_dir) / RECORD_FILE, record)


def read_record(folder: str | Path | None) -> dict:
    """mmlora.json of a saved folder ({} when the folder has none or is not a local folder)."""
    if folder is None:
        return {}
    path = Path(folder) / RECORD_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        from mmlora.errors import MmloraError

        raise MmloraError(f"{path} is not valid JSON; restore it or delete it (it records the "
                          "trained preprocessing and base model).") from None
    return data if isinstance(data, dict) else {}


def recorded_bounds(folder: str | Path | None) -> tuple[int, int] | None:
    """(min_pixels, max_pixels) a saved folder was trained with, or None when it records none."""
    record = read_record(folder)
    if isinstance(record.get("min_pixels"), int) and isinstance(record.get("max_pixels"), int):
        return record["min_pixels"], record["max_pixels"]
    return None


def trained_bounds(adapter: str | Path | None, model_name: str) -> tuple[int, int] | None:
    """The bounds a run was trained with: the adapter's (its recipe.yaml, else mmlora.json),
    else those a saved model folder records; None when neither says."""
    if adapter:
        import yaml

        recipe = Path(adapter) / "recipe.yaml"
        model = (yaml.safe_load(recipe.read_text()) or {}).get("model", {}) if recipe.is_file() else {}
        if isinstance(model.get("min_pixels"), int) and isinstance(model.get("max_pixels"), int):
            return model["min_pixels"], model["max_pixels"]
        return recorded_bounds(adapter)
    return recorded_bounds(model_name) if Path(model_name).is_dir() else None


def recipe_sets_bounds(set_keys: frozenset[str]) -> bool:
    """Whether the recipe file or a `model.min_pixels=` / `model.max_pixels=` override sets the
    bounds (a recipe that leaves them at their defaults lets the saved folder's bounds apply).
    `set_keys`: the recipe's own keys (mmlora.config.loading.load_recipe_and_set_keys)."""
    return bool({"model.min_pixels", "model.max_pixels"} & set_keys)
