"""Load a VLM and its processor: hub id, local directory or built-in tiny id, one code path."""

from __future__ import annotations

import logging
import os
import socket
import warnings
from dataclasses import dataclass
from urllib.parse import urlparse
from pathlib import Path
from typing import Any

from mmlora.config import ModelConfig
from mmlora.errors import MmloraError
from mmlora.families import Family, family_for_model_type
from mmlora.processor import ImageTextProcessor, load_processor
from mmlora.tiny import build_tiny_model, is_tiny, tiny_dir

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


def _hub_kwargs(cfg: ModelConfig) -> dict:
    kwargs = {"trust_remote_code": cfg.trust_remote_code}
    if cfg.revision:
        kwargs["revision"] = cfg.revision
    return kwargs


def _source_dir(name: str) -> str:
    """Where the config and processor files are read from."""
    return str(tiny_dir(name)) if is_tiny(name) else name


def _explain_load_failure(name: str, err: Exception) -> MmloraError:
    if Path(name).exists():
        return MmloraError(f"Could not load the model in '{name}': {err}")
    if "/" in name and not name.startswith((".", "/")):
        return MmloraError(
            f"Could not load '{name}' from the Hugging Face Hub (no connection, unknown id, or no "
            f"access). Pass a local directory instead, e.g. `hf download {name} --local-dir "
            f"models/{name.split('/')[-1]}` on a connected machine, then model.name=models/"
            f"{name.split('/')[-1]}."
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
    return family_for_model_type(config.model_type)


def load_model_and_processor(cfg: ModelConfig, device: str | None = None) -> LoadedModel:
    """Load weights (or build the tiny model) and the processor for `cfg.name`."""
    from transformers import AutoModelForImageTextToText

    device = device or pick_device()
    dtype = pick_dtype(cfg.dtype, device)
    family = detect_family(cfg.name, cfg)
    source = _source_dir(cfg.name)
    try:
        processor = load_processor(source, family, cfg.min_pixels, cfg.max_pixels, **_hub_kwargs(cfg))
        if is_tiny(cfg.name):
            model = build_tiny_model(cfg.name, dtype=dtype)
        else:
            model = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype, **_hub_kwargs(cfg))
    except (OSError, ValueError) as err:
        raise _explain_load_failure(cfg.name, err) from None
    log.info("loaded %s (%s, %s)", cfg.name, family.name, dtype)
    return LoadedModel(model=model.to(device), processor=processor, family=family)


def save_tiny_model(model_id: str, out_dir: str | Path) -> Path:
    """Write a built-in tiny model as a normal checkpoint folder (weights + processor files)."""
    cfg = ModelConfig(name=model_id)
    loaded = load_model_and_processor(cfg, device="cpu")
    out_dir = Path(out_dir)
    loaded.model.save_pretrained(out_dir)
    loaded.processor.save_pretrained(out_dir)
    return out_dir
