"""Load a VLM and its processor: hub id, local directory or built-in tiny id, one code path."""

from __future__ import annotations

import logging
import os
import pickle
import re
import socket
import tempfile
import warnings
from dataclasses import dataclass
from urllib.parse import urlparse
from pathlib import Path
from typing import Any

from mmlora.config.schema import ModelConfig
from mmlora.errors import MmloraError, is_pickle_refusal
from mmlora.models.families import Family, family_for_model_type
from mmlora.models.processor import ImageTextProcessor, load_processor
from mmlora.models.processor_files import model_record
from mmlora.models.tiny import build_tiny_model, copy_processor_files, is_tiny, tiny_dir

log = logging.getLogger(__name__)

# PEFT still reads transformers' deprecated `is_gradient_checkpointing` property; the warning
# is about their code, not the user's, so keep it off the user's screen.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


@dataclass
class LoadedModel:
    model: Any
    processor: ImageTextProcessor
    family: Family


def pick_device() -> str:
    """cuda when a GPU is visible (honouring CUDA_VISIBLE_DEVICES), else cpu."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(requested: str, device: str):
    """bf16 on GPUs that support it, fp32 elsewhere (CPU bf16 matmuls are slow and lossy)."""
    import torch

    if requested != "auto":
        return getattr(torch, requested)
    if device == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def pick_attn_implementation(requested: str, device: str, dtype) -> str:
    """train.attn_implementation: `auto` is flash_attention_2 where flash-attn is installed and
    usable (CUDA GPU of compute capability 8.0+, bf16/fp16 weights), else sdpa."""
    import importlib.util

    import torch

    if requested != "auto":
        return requested
    usable = (device == "cuda" and dtype in (torch.bfloat16, torch.float16)
              and importlib.util.find_spec("flash_attn") is not None
              and torch.cuda.get_device_capability()[0] >= 8)
    return "flash_attention_2" if usable else "sdpa"


def set_attn_implementation(model, requested: str = "auto") -> str:
    """Switch a loaded model's attention kernel (train.attn_implementation); returns the one used."""
    param = next(model.parameters())
    chosen = pick_attn_implementation(requested, param.device.type, param.dtype)
    if model.config._attn_implementation != chosen:
        try:
            model.set_attn_implementation(chosen)
        except (ImportError, ValueError) as err:
            raise MmloraError(f"train.attn_implementation={chosen} cannot be used here: {err}") from None
    return chosen


def _hub_kwargs(cfg: ModelConfig) -> dict:
    kwargs = {"trust_remote_code": cfg.trust_remote_code}
    if cfg.revision:
        kwargs["revision"] = cfg.revision
    return kwargs


def _source_dir(name: str) -> str:
    """Where the config and processor files are read from."""
    return str(tiny_dir(name)) if is_tiny(name) else name


def _explain_load_failure(name: str, err: Exception) -> MmloraError:
    """One line for a model that did not load: what `name` was taken for, and what to do."""
    path = Path(name)
    if path.is_dir() and not (path / "config.json").is_file():
        return MmloraError(f"'{name}' has no config.json, so it is not a model folder: give the folder that "
                           "holds config.json, the weights (*.safetensors) and the processor files, as the "
                           "hub lays them out (`hf download ORG/NAME --local-dir FOLDER`).")
    if path.exists():
        return MmloraError(f"Could not load the model in '{name}': {err}")
    if "/" in name and not name.startswith((".", "/")):
        # Both readings fail: say so, since a typo in a local path looks like an owner/name id.
        return MmloraError(
            f"'{name}' is no local folder, and the Hugging Face Hub could not give it as a model id (no "
            f"connection, unknown id, or no access). For a local folder, check the path; for a hub model, "
            f"run `hf download {name} --local-dir models/{path.name}` on a connected machine and give "
            f"models/{path.name} as the model (model.name in a recipe, --model on the command line)."
        )
    return MmloraError(f"Model '{name}' is neither a local directory nor a hub id (owner/name).")


def hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connection to the hub endpoint: fails in seconds where the hub client would
    retry with back-off for half a minute before giving up."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def detect_family(name: str, cfg: ModelConfig) -> Family:
    """The model family from the checkpoint's config (no weights read)."""
    return family_for_model_type(load_config(name, cfg).model_type)


def load_config(name: str, cfg: ModelConfig):
    """The checkpoint's config (hub id, local directory or tiny id), with errors that say why."""
    from transformers import AutoConfig

    source = _source_dir(name)
    try:
        if Path(source).is_dir():
            config = AutoConfig.from_pretrained(source, **_hub_kwargs(cfg))
        else:
            try:  # a hub id already in the local cache loads without the network
                config = AutoConfig.from_pretrained(source, local_files_only=True, **_hub_kwargs(cfg))
            except OSError:
                if not hub_reachable():
                    raise
                config = AutoConfig.from_pretrained(source, **_hub_kwargs(cfg))
    except (OSError, ValueError) as err:
        raise _explain_load_failure(name, err) from None
    return config


def quantization_config(cfg: ModelConfig, family: Family, dtype):
    """bitsandbytes settings for model.quantization (None for none), or a clear error where
    QLoRA cannot run. Only the language tower is quantised: the vision tower, the projector
    (which lora.projector=full trains) and lm_head stay in `dtype`."""
    import importlib.util

    import torch

    if cfg.quantization == "none":
        return None
    if not torch.cuda.is_available():
        raise MmloraError(
            f"model.quantization={cfg.quantization} (QLoRA) needs a CUDA GPU: bitsandbytes quantises "
            "weights on the GPU and none is visible. On CPU use model.quantization=none."
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise MmloraError(
            f"model.quantization={cfg.quantization} needs bitsandbytes, which is not installed: "
            "`pip install bitsandbytes` in this environment (it is optional for mmlora)."
        )
    from transformers import BitsAndBytesConfig

    keep = [re.escape(path) for path in (family.vision_tower, *family.projector)] + ["lm_head"]
    if cfg.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=keep)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype, llm_int8_skip_modules=keep,
    )


def _load_weights(cfg: ModelConfig, source: str, dtype, quantization):
    from transformers import AutoModelForImageTextToText

    if quantization is None:
        if is_tiny(cfg.name):
            return build_tiny_model(cfg.name, dtype=dtype)
        return AutoModelForImageTextToText.from_pretrained(source, dtype=dtype, **_hub_kwargs(cfg))
    from accelerate import PartialState

    # Quantised weights are placed while loading: each process takes the GPU of its local rank.
    device_map = {"": PartialState().local_process_index}
    if is_tiny(cfg.name):
        # bitsandbytes quantises while loading a checkpoint: write the seeded weights first.
        with tempfile.TemporaryDirectory() as folder:
            build_tiny_model(cfg.name, dtype=dtype).save_pretrained(folder)
            model = AutoModelForImageTextToText.from_pretrained(
                folder, dtype=dtype, quantization_config=quantization, device_map=device_map)
        return model
    return AutoModelForImageTextToText.from_pretrained(
        source, dtype=dtype, quantization_config=quantization, device_map=device_map, **_hub_kwargs(cfg))


def load_model_and_processor(cfg: ModelConfig, device: str | None = None,
                             attn_implementation: str = "auto") -> LoadedModel:
    """Load weights (or build the tiny model) and the processor for `cfg.name`; attention as
    `pick_attn_implementation` decides."""
    device = device or pick_device()
    dtype = pick_dtype(cfg.dtype, device)
    config = load_config(cfg.name, cfg)
    family = family_for_model_type(config.model_type)
    quantization = quantization_config(cfg, family, dtype)
    source = _source_dir(cfg.name)
    try:
        processor = load_processor(source, family, cfg.min_pixels, cfg.max_pixels, model_config=config,
                                   **_hub_kwargs(cfg))
        model = _load_weights(cfg, source, dtype, quantization)
    except (OSError, ValueError) as err:
        raise _explain_load_failure(cfg.name, err) from None
    except (RuntimeError, pickle.UnpicklingError) as err:
        if not is_pickle_refusal(err):
            raise
        # transformers reads .bin/.pt weights with torch.load(weights_only=True): a file that
        # holds pickled objects besides tensors is refused rather than executed.
        pickles = sorted(p.name for p in Path(source).glob("*") if p.suffix in (".bin", ".pt", ".pth"))
        raise MmloraError(
            f"Refusing to load {', '.join(pickles) or 'the weights'} in '{cfg.name}': the file holds "
            "pickled Python objects, not just tensors, and unpickling it could run code. Use "
            "safetensors weights from a source you trust."
        ) from None
    log.info("loaded %s (%s, %s, quantization %s)", cfg.name, family.name, dtype, cfg.quantization)
    # What saved folders record (mmlora/models/processor_files.py): PEFT writes model.name_or_path into
    # adapter_config.json, so a local folder is named by its absolute path there too.
    processor.record = model_record(cfg.name, family, config, cfg.min_pixels, cfg.max_pixels)
    model.name_or_path = model.config._name_or_path = processor.record["base_model"]
    if quantization is None:  # quantised models are placed by device_map and cannot be moved
        model = model.to(device)
    set_attn_implementation(model, attn_implementation)
    return LoadedModel(model=model, processor=processor, family=family)


def save_tiny_model(model_id: str, out_dir: str | Path) -> Path:
    """Write a built-in tiny model as a normal checkpoint folder: its weights and the shipped
    processor files, verbatim (the twin's own bounds, not the recipe defaults)."""
    out_dir = Path(out_dir)
    # Only the weights are built: the processor files are copied, so no processor is loaded.
    build_tiny_model(model_id).save_pretrained(out_dir)
    copy_processor_files(model_id, out_dir)
    return out_dir
