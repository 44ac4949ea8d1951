"""Refuse an adapter that was trained on another base model, before it is applied.

PEFT applies an adapter to whatever model it is given: modules it does not find are skipped
with a warning (a LLaVA adapter on Qwen2-VL changes nothing and scores garbage) and mismatched
shapes fail deep inside torch with a traceback. mmlora checks two things first:

- the family the adapter records (mmlora.json, else the config of its adapter_config.json
  `base_model_name_or_path` when that loads offline) against the model's family;
- every tensor in adapter_model.safetensors against the module it adapts: a LoRA A/B pair
  must match the layer's in/out features, a fully trained module's weight its shape. Shapes are
  read from the safetensors header; no adapter weight is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

from mmlora.errors import MmloraError, is_pickle_refusal

ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."


def adapter_base_model(adapter_dir: Path) -> str:
    """The base model an adapter was trained on, from its adapter_config.json."""
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.is_file():
        raise MmloraError(f"'{adapter_dir}' is not an adapter directory (no adapter_config.json).")
    base = json.loads(config_path.read_text()).get("base_model_name_or_path")
    if not base:
        raise MmloraError(f"{config_path} names no base model; pass --model.")
    return base


def adapter_family(adapter_dir: Path) -> str | None:
    """The family the adapter was trained on: recorded, else from its base model's config."""
    from mmlora.models.processor_files import read_record

    recorded = read_record(adapter_dir).get("family")
    if recorded:
        return recorded
    from mmlora.config.schema import ModelConfig
    from mmlora.models.families import family_for_model_type
    from mmlora.models.loading import load_config

    try:
        base = adapter_base_model(adapter_dir)
        return family_for_model_type(load_config(base, ModelConfig(name=base)).model_type).name
    except MmloraError:
        return None  # base not reachable here: the shape check still runs


def check_adapter_family(adapter_dir: str | Path, family, model_name: str) -> None:
    """Refuse (one line) an adapter recorded for another family than `family`."""
    adapter_dir = Path(adapter_dir)
    trained = adapter_family(adapter_dir)
    if trained is not None and trained != family.name:
        raise MmloraError(
            f"Adapter {adapter_dir} was trained on a {trained} model, but '{model_name}' is "
            f"{family.name}: apply it to the base model it was trained on (its adapter_config.json "
            "names it), or pass the matching --model / model.name."
        )


def _adapter_shapes(adapter_dir: Path) -> dict[str, list[int]]:
    from safetensors import safe_open

    path = adapter_dir / ADAPTER_WEIGHTS
    if not path.is_file() and (adapter_dir / "adapter_model.bin").is_file():
        return _bin_adapter_shapes(adapter_dir / "adapter_model.bin")
    if not path.is_file():
        raise MmloraError(f"{adapter_dir} has no {ADAPTER_WEIGHTS}: not an adapter written by "
                          "`mmlora train` (or PEFT with safetensors).")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: list(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except Exception as err:  # noqa: BLE001 - any unreadable header: say which file
        raise MmloraError(f"{path} is not a readable safetensors file ({err}).") from None


def _bin_adapter_shapes(path: Path) -> dict[str, list[int]]:
    """Shapes from an older PEFT adapter_model.bin: tensors only (weights_only), never pickles."""
    import pickle

    import torch

    from mmlora.models.lora import pickled_adapter_error

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError) as err:
        if is_pickle_refusal(err):
            raise pickled_adapter_error(path.parent) from None
        raise MmloraError(f"{path} is not a readable adapter file ({err}).") from None
    return {key: list(value.shape) for key, value in state.items() if hasattr(value, "shape")}


def _expected_shape(name: str, shape: list[int], modules: dict, params: dict) -> list[int] | None:
    """The shape tensor `name` (PEFT prefix removed) must have on this model, or None when the
    model has no such module or parameter. LoRA ranks come from the adapter itself."""
    for marker in (".lora_A.weight", ".lora_B.weight", ".lora_magnitude_vector"):
        if name.endswith(marker):
            module = modules.get(name[: -len(marker)])
            if module is None or not hasattr(module, "in_features"):
                return None
            if marker == ".lora_A.weight":
                return [shape[0], module.in_features]
            if marker == ".lora_B.weight":
                return [module.out_features, shape[-1]]
            return [module.out_features]
    param = params.get(name)  # a fully trained module (modules_to_save)
    return None if param is None else list(param.shape)


def check_adapter_fits(adapter_dir: str | Path, model, model_name: str) -> None:
    """Refuse (one line) an adapter whose tensors do not fit `model`'s modules."""
    adapter_dir = Path(adapter_dir)
    modules = dict(model.named_modules())
    params = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    for key, shape in sorted(_adapter_shapes(adapter_dir).items()):
        name = key.removeprefix(PEFT_PREFIX)
        expected = _expected_shape(name, shape, modules, params)
        if expected is None:
            raise MmloraError(
                f"Adapter {adapter_dir} does not fit '{model_name}': it adapts "
                f"'{name.split('.lora_')[0]}', which that model does not have. Apply it to the "
                "base model it was trained on."
            )
        if expected != shape:
            raise MmloraError(
                f"Adapter {adapter_dir} does not fit '{model_name}': '{name}' is {shape} in the "
                f"adapter but the model needs {expected} (another model size?). Apply it to the "
                "base model it was trained on."
            )


def adapter_tensor_shapes(adapter_dir: str | Path) -> dict[str, list[int]]:
    """Every tensor of a saved adapter (PEFT names) with its shape, read from the file header
    (safetensors) or, for an older adapter_model.bin, with weights_only loading."""
    return _adapter_shapes(Path(adapter_dir))
