"""The `vllm` backend of `mmlora serve`: the vLLM OpenAI-server command that serves a model as
it was trained.

For an adapter: the base model with the adapter as a LoRA module (`--enable-lora --lora-modules
{"name", "path", "base_model_name"}`) and the flags mmlora/inference/vllm_check.py finds it needs
(`--max-lora-rank`, `--enable-tower-connector-lora` when it has LoRA on the vision tower or the
projector: without it vLLM drops those modules with no more than a warning, vllm#23796); the
adapter's chat template (`--chat-template`, mmlora's own for LLaVA 1.5, LLaVA-NeXT and
PaliGemma) and the trained pixel bounds (`--mm-processor-kwargs`, the family's image-processor
size options, as mmlora builds its own processor with them). An adapter vLLM would refuse or
serve other than trained (vllm_check.py: fully trained modules, DoRA, a rank above 512, tower
LoRA on a family vLLM takes none for) is refused with the fix: `mmlora merge` it and serve the
merged folder.

For a model folder (e.g. merged): the folder itself, which carries its processor files and
chat template, with its recorded bounds as processor kwargs.

Flag names are vLLM's (vllm/engine/arg_utils.py, vllm/entrypoints/openai/cli_args.py);
`python -m vllm.entrypoints.openai.api_server` is the server `vllm serve` starts.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from mmlora.errors import MmloraError

VLLM_SERVER_MODULE = "vllm.entrypoints.openai.api_server"


class NotServableByVllm(MmloraError):
    """vLLM cannot serve this model or adapter as trained; the message says what to do instead."""


@dataclass
class VllmCommand:
    argv: list[str]
    notes: list[str]
    """One line per choice made (the adapter check, the pixel bounds)."""


def processor_kwargs(cfg) -> dict:
    """The image-processor options mmlora builds its processor with for cfg's pixel bounds (the
    family's size options; empty for families that resize every image to one size)."""
    from mmlora.data.scan import load_data_processor

    processor = load_data_processor(cfg)
    return processor.family.image_size_options(processor.image_processor, cfg.min_pixels, cfg.max_pixels)


def lora_flags(adapter_dir: Path, served: str, base: str) -> tuple[list[str], list[str]]:
    """(vLLM flags, notes) serving the adapter as the LoRA module `served` on `base`."""
    from mmlora.inference.vllm_check import check_adapter

    report = check_adapter(adapter_dir)
    lines = report.lines()
    if not report.loads_as_is:
        verdict = lines[1].removeprefix("vLLM: ")
        raise NotServableByVllm(f"{adapter_dir}: vLLM {verdict} With mmlora: `mmlora merge --adapter {adapter_dir} "
                                "--out DIR`, then `mmlora serve --model DIR`.")
    module = {"name": served, "path": str(adapter_dir), "base_model_name": base}
    flags = report.serve_flags()
    flags[1:1] = ["--lora-modules", json.dumps(module)]  # after --enable-lora
    template = adapter_dir / "chat_template.jinja"
    if template.is_file():
        flags += ["--chat-template", str(template)]
        lines.append("the adapter's chat template (the one it was trained with) -> --chat-template")
    return flags, lines


def _checked_vllm_source(name: str) -> None:
    if name.startswith("tiny/"):
        raise NotServableByVllm(f"'{name}' is one of mmlora's built-in tiny twins, which vLLM cannot load by id: "
                                "save it as a folder first (`mmlora tiny DIR`) and serve that, or use --backend "
                                "transformers.")


def build_vllm_command(model: str | None, adapter: str | None, served: str, host: str, port: int,
                       min_pixels: int | None = None, max_pixels: int | None = None,
                       python: str = sys.executable) -> VllmCommand:
    """The vLLM server command for `model` and/or `adapter` (see the module docstring)."""
    from mmlora.models.adapter_loading import model_config_for

    cfg = model_config_for(model, adapter, min_pixels, max_pixels)
    _checked_vllm_source(cfg.name)
    argv = [python, "-m", VLLM_SERVER_MODULE, "--model", cfg.name, "--host", host, "--port", str(port)]
    notes = []
    if adapter:
        flags, notes = lora_flags(Path(adapter).resolve(), served, cfg.name)
        argv += flags
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
