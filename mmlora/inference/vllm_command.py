"""The `vllm` backend of `mmlora serve`: the vLLM OpenAI-server command that serves a model as
it was trained.

For an adapter: the base model with the adapter as a LoRA module
(`--enable-lora --lora-modules {"name", "path", "base_model_name"} --max-lora-rank R`), where R
is the smallest rank vLLM accepts (its LoRAConfig.max_lora_rank choices) that holds the
adapter's largest rank; `--enable-tower-connector-lora` when the adapter has LoRA on the vision
tower or the projector (without it vLLM drops those modules with no more than a warning,
vllm#23796); the adapter's chat template (`--chat-template`, mmlora's own for LLaVA 1.5,
LLaVA-NeXT and PaliGemma) and the trained pixel bounds (`--mm-processor-kwargs`, the family's
image-processor size options as mmlora builds its own processor with them). An adapter that
vLLM's LoRA loader cannot apply as trained (fully trained modules, `modules_to_save`, or DoRA
magnitudes) is refused with the fix: `mmlora merge` it and serve the merged folder.

For a model folder (e.g. merged): the folder itself, which carries its processor files and
chat template, with its recorded bounds as processor kwargs.

Flag names are vLLM's (vllm/engine/arg_utils.py, vllm/entrypoints/openai/cli_args.py);
`python -m vllm.entrypoints.openai.api_server` is the server `vllm serve` starts.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mmlora.errors import MmloraError

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""vLLM's LoRAConfig.max_lora_rank choices (MaxLoRARanks)."""
VLLM_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
PEFT_PREFIX = "base_model.model."
LORA_MARKERS = (".lora_A.", ".lora_B.")


class NotServableByVllm(MmloraError):
    """vLLM cannot serve this model or adapter as trained; the message says what to do instead."""


@dataclass
class AdapterModules:
    """What an adapter's weights touch, from its safetensors header and adapter_config.json."""

    rank: int
    lora: list[str] = field(default_factory=list)
    """Module paths (on the *ForConditionalGeneration model) that carry a LoRA pair."""
    full: list[str] = field(default_factory=list)
    """Fully trained tensors (`modules_to_save`), which vLLM's LoRA loader does not apply."""
    dora: bool = False


@dataclass
class VllmCommand:
    argv: list[str]
    notes: list[str]
    """One line per choice made (which rank, whether tower/connector LoRA, which bounds)."""


def adapter_modules(adapter_dir: Path) -> AdapterModules:
    """The adapter's LoRA modules, fully trained tensors and largest rank."""
    from safetensors import safe_open

    weights = adapter_dir / "adapter_model.safetensors"
    config_path = adapter_dir / "adapter_config.json"
    if not weights.is_file() or not config_path.is_file():
        raise MmloraError(f"{adapter_dir} has no adapter_model.safetensors and adapter_config.json: not an "
                          "adapter written by `mmlora train`; vLLM reads only safetensors adapters.")
    config = json.loads(config_path.read_text())
    ranks = [int(config.get("r") or 0), *map(int, (config.get("rank_pattern") or {}).values())]
    found = AdapterModules(rank=max(ranks))
    with safe_open(str(weights), framework="pt") as handle:
        for key in handle.keys():
            name = key.removeprefix(PEFT_PREFIX)
            marker = next((m for m in LORA_MARKERS if m in name), None)
            if marker:
                module = name.split(marker)[0]
                if module not in found.lora:
                    found.lora.append(module)
                if marker == ".lora_A.":
                    found.rank = max(found.rank, handle.get_slice(key).get_shape()[0])
            elif "lora_magnitude_vector" in name:
                found.dora = True
            else:
                found.full.append(name)
    return found


def vllm_lora_rank(rank: int) -> int:
    """The smallest `--max-lora-rank` vLLM accepts that holds `rank`."""
    for choice in VLLM_LORA_RANKS:
        if choice >= rank:
            return choice
    raise NotServableByVllm(f"The adapter's LoRA rank {rank} is above vLLM's largest --max-lora-rank "
                      f"({VLLM_LORA_RANKS[-1]}); merge it (`mmlora merge`) and serve the merged folder.")


def tower_or_connector(modules: list[str], family) -> list[str]:
    """The modules among `modules` that lie in the vision tower or the projector."""
    from mmlora.models.lora import component_of

    return [name for name in modules if component_of(name, family) != "language"]


def processor_kwargs(cfg) -> dict:
    """The image-processor options mmlora builds its processor with for cfg's pixel bounds (the
    family's size options; empty for families that resize every image to one size)."""
    from mmlora.data.scan import load_data_processor

    processor = load_data_processor(cfg)
    return processor.family.image_size_options(processor.image_processor, cfg.min_pixels, cfg.max_pixels)


def _checked_vllm_source(name: str) -> None:
    if name.startswith("tiny/"):
        raise NotServableByVllm(f"'{name}' is one of mmlora's built-in tiny twins, which vLLM cannot load by id: save it "
                          "as a folder first (`mmlora tiny DIR`) and serve that, or use --backend transformers.")


def build_vllm_command(model: str | None, adapter: str | None, served: str, host: str, port: int,
                       min_pixels: int | None = None, max_pixels: int | None = None,
                       python: str = sys.executable) -> VllmCommand:
    """The vLLM server command for `model` and/or `adapter` (see the module docstring)."""
    from mmlora.models.adapter_loading import model_config_for
    from mmlora.models.loading import detect_family

    cfg = model_config_for(model, adapter, min_pixels, max_pixels)
    _checked_vllm_source(cfg.name)
    family = detect_family(cfg.name, cfg)
    argv = [python, "-m", VLLM_SERVER_MODULE, "--model", cfg.name, "--host", host, "--port", str(port)]
    notes = []
    if adapter:
        adapter_dir = Path(adapter).resolve()
        found = adapter_modules(adapter_dir)
        if found.full or found.dora:
            what = (f"fully trains {', '.join(found.full[:3])}{' ...' if len(found.full) > 3 else ''}"
                    if found.full else "uses DoRA (magnitude vectors)")
            raise NotServableByVllm(f"The adapter {adapter} {what}, which vLLM's LoRA loader does not apply: merge it "
                              f"(`mmlora merge --adapter {adapter} --out DIR`) and serve the merged folder "
                              "(`mmlora serve --model DIR --backend vllm`).")
        rank = vllm_lora_rank(found.rank)
        module = {"name": served, "path": str(adapter_dir), "base_model_name": cfg.name}
        argv += ["--enable-lora", "--lora-modules", json.dumps(module), "--max-lora-rank", str(rank)]
        notes.append(f"LoRA rank {found.rank} -> --max-lora-rank {rank}")
        vision = tower_or_connector(found.lora, family)
        if vision:
            argv.append("--enable-tower-connector-lora")
            notes.append(f"{len(vision)} LoRA module(s) in the vision tower/projector (e.g. {vision[0]}) -> "
                         "--enable-tower-connector-lora (vLLM drops them without it)")
        template = adapter_dir / "chat_template.jinja"
        if template.is_file():
            argv += ["--chat-template", str(template)]
            notes.append("the adapter's chat template (the one it was trained with)")
    else:
        argv += ["--served-model-name", served]
    options = processor_kwargs(cfg)
    if options:
        argv += ["--mm-processor-kwargs", json.dumps(options, sort_keys=True)]
        notes.append(f"pixel bounds min_pixels={cfg.min_pixels} max_pixels={cfg.max_pixels} -> --mm-processor-kwargs")
    return VllmCommand(argv, notes)


def vllm_available() -> tuple[bool, str]:
    """(True, "") when vLLM is importable and CUDA is visible, else (False, why not)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return False, "vLLM is not installed"
    import torch

    if not torch.cuda.is_available():
        return False, "no CUDA device is visible"
    return True, ""
