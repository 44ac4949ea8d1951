"""Will vLLM serve this adapter as it was trained? Read from the adapter's own files, no weights.

Facts about vLLM's LoRA loading this check encodes (vllm/lora/utils.py, lora_model.py,
model_manager.py, config/lora.py):

- Every tensor of adapter_model.safetensors must be a LoRA factor (`...lora_A.weight`,
  `...lora_B.weight`, `lora_embedding_A/B`); any other tensor (a fully trained projector saved
  as `modules_to_save`, trained biases, DoRA magnitudes) makes vLLM refuse the whole adapter
  ("... is unsupported LoRA weight"; DoRA: "not implemented yet").
- LoRA on a multimodal model goes to the language model. LoRA on the vision tower and on the
  projector ("connector") is applied only with `--enable-tower-connector-lora` (experimental),
  and only for models that declare support; otherwise vLLM ignores those modules with no
  more than a log warning (vllm#23796) and answers with the untrained tower.
- `--max-lora-rank` takes one of 1, 8, 16, 32, 64, 128, 256, 320, 512 (default 16) and must be
  at least the adapter's largest rank.

A merged folder (`mmlora merge`) has no such limits: every trained change is in its weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from mmlora.errors import MmloraError
from mmlora.models.adapter_fit import PEFT_PREFIX, adapter_family, adapter_tensor_shapes
from mmlora.models.families import FAMILIES

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The values vLLM's --max-lora-rank accepts (vllm/config/lora.py, MaxLoRARanks)."""

TOWER_CONNECTOR_LORA = {
    "qwen2_vl": "vllm#26674", "qwen2_5_vl": "vllm#26674", "qwen3_vl": "vllm#26674",
    "idefics3": "vllm#26674", "llava": "vllm#31513", "paligemma": "vllm#31656",
    "gemma3": "gemma3_mm.py: supports_tower_connector_lora",
}
"""mmlora families whose vLLM model declares tower/connector LoRA, with where that was added.
LLaVA-NeXT is not listed: mmlora found no such declaration for it (vllm#31479 tracks them)."""

LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight", ".lora_embedding_A", ".lora_embedding_B")


@dataclass
class VllmReport:
    """Which adapter modules vLLM applies, drops or refuses, and the flags it needs."""

    family: str | None
    language: list[str] = field(default_factory=list)
    tower: list[str] = field(default_factory=list)
    connector: list[str] = field(default_factory=list)
    not_lora: list[str] = field(default_factory=list)
    """Tensors that are not LoRA factors: vLLM refuses the adapter."""
    dora: bool = False
    max_rank: int = 0

    @property
    def refused(self) -> bool:
        return bool(self.not_lora) or self.dora or self.max_rank > VLLM_LORA_RANKS[-1]

    @property
    def tower_connector_supported(self) -> bool:
        return self.family in TOWER_CONNECTOR_LORA

    @property
    def max_lora_rank(self) -> int:
        """The smallest --max-lora-rank vLLM accepts that holds the adapter's largest rank."""
        return next((r for r in VLLM_LORA_RANKS if r >= self.max_rank), VLLM_LORA_RANKS[-1])

    @property
    def loads_as_is(self) -> bool:
        """True when `vllm serve BASE --enable-lora --lora-modules NAME=DIR` (with the flags of
        `serve_flags`) applies every trained module."""
        vision = self.tower or self.connector
        return not self.refused and (not vision or self.tower_connector_supported)

    def serve_flags(self) -> list[str]:
        """vLLM serve flags this adapter needs (empty when vLLM refuses it)."""
        if self.refused:
            return []
        flags = ["--enable-lora", "--max-lora-rank", str(self.max_lora_rank)]
        if (self.tower or self.connector) and self.tower_connector_supported:
            flags.append("--enable-tower-connector-lora")
        return flags

    def lines(self) -> list[str]:
        """The report as readable lines."""
        counts = (f"LoRA modules: {len(self.language)} language, {len(self.tower)} vision tower, "
                  f"{len(self.connector)} projector (connector); largest rank {self.max_rank}")
        out = [counts]
        if self.refused:
            why = []
            if self.not_lora:
                modules = sorted({t.rsplit(".", 1)[0] for t in self.not_lora})
                shown = ", ".join(modules[:3]) + (f" and {len(modules) - 3} more" if len(modules) > 3 else "")
                why.append(f"{len(self.not_lora)} tensor(s) that are not LoRA factors (fully trained "
                           f"weights or biases of {shown})")
            if self.dora:
                why.append("DoRA, which vLLM does not load")
            if self.max_rank > VLLM_LORA_RANKS[-1]:
                why.append(f"rank {self.max_rank} above vLLM's largest --max-lora-rank {VLLM_LORA_RANKS[-1]}")
            out.append("vLLM: refuses this adapter: it holds " + "; ".join(why) + ". Serve the merged model "
                       "instead (mmlora merge --adapter DIR --out OUT; vllm serve OUT).")
            return out
        vision = len(self.tower) + len(self.connector)
        if vision and not self.tower_connector_supported:
            out.append(f"vLLM: would drop the {vision} vision tower/projector LoRA module(s) (with only a "
                       f"warning): its {self.family} model is not known to take tower/connector LoRA. Serve "
                       "the merged model instead (mmlora merge; vllm serve OUT).")
        elif vision:
            out.append(f"vLLM: loads as trained only with --enable-tower-connector-lora "
                       f"({TOWER_CONNECTOR_LORA[self.family]}; experimental); without it vLLM drops the "
                       f"{len(self.tower)} tower and {len(self.connector)} projector module(s) with only a warning.")
        else:
            out.append("vLLM: loads as is (language-model LoRA only).")
        if not vision or self.tower_connector_supported:
            out.append("vLLM flags: " + " ".join(self.serve_flags()))
        return out


def component_of(module: str, family) -> str:
    """"language", "tower" or "connector" for a module path of the HF model (projector first:
    Qwen-VL's projector sits inside its vision tower)."""
    if family is None:
        return "language"
    if any(module == p or module.startswith(p + ".") for p in family.projector):
        return "connector"
    if module == family.vision_tower or module.startswith(family.vision_tower + "."):
        return "tower"
    return "language"


def check_adapter(adapter_dir: str | Path) -> VllmReport:
    """The vLLM report of a `mmlora train` (or PEFT) adapter folder, from its files alone."""
    adapter_dir = Path(adapter_dir)
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.is_file():
        raise MmloraError(f"{adapter_dir} has no adapter_config.json: give an adapter folder written by "
                          "`mmlora train`.")
    config = json.loads(config_path.read_text())
    name = adapter_family(adapter_dir)
    family = next((f for f in FAMILIES if f.name == name), None)
    report = VllmReport(name, dora=bool(config.get("use_dora")))
    for key, shape in sorted(adapter_tensor_shapes(adapter_dir).items()):
        path = key.removeprefix(PEFT_PREFIX)
        suffix = next((s for s in LORA_SUFFIXES if path.endswith(s)), None)
        if suffix is None:
            report.not_lora.append(path)
            continue
        module = path[: -len(suffix)]
        if suffix == ".lora_A.weight":
            report.max_rank = max(report.max_rank, shape[0])
            getattr(report, component_of(module, family)).append(module)
    return report
