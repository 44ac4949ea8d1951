"""Attach LoRA with PEFT: language tower always, projector as the recipe says, vision frozen."""

from __future__ import annotations

import re
from dataclasses import dataclass

from mmlora.config import LoraConfig
from mmlora.errors import MmloraError
from mmlora.families import Family


def _linear_names(model, prefix: str) -> list[str]:
    import torch

    return [
        name
        for name, module in model.named_modules()
        if name.startswith(prefix + ".") and isinstance(module, torch.nn.Linear)
    ]


def resolve_targets(model, family: Family, cfg: LoraConfig) -> list[str]:
    """Full module names that get LoRA, resolved on the loaded model.

    A short name in `lora.targets` that matches no linear layer of the language tower is an
    error: PEFT would otherwise train fewer layers than the recipe claims without saying so.
    """
    if not any(n == family.language_model for n, _ in model.named_modules()):
        raise MmloraError(
            f"The model has no module '{family.language_model}' where the {family.name} family "
            "keeps its language tower; the transformers version may have renamed it."
        )
    language = _linear_names(model, family.language_model)
    available = sorted({name.rsplit(".", 1)[-1] for name in language})
    unknown = [t for t in cfg.targets if t not in available]
    if unknown:
        raise MmloraError(
            f"lora.targets {unknown} match no linear layer of the language tower "
            f"({family.language_model}). Available: {', '.join(available)}."
        )
    targets = [name for name in language if name.rsplit(".", 1)[-1] in cfg.targets]
    if cfg.projector == "lora":
        projector = _linear_names(model, family.projector)
        if not projector:
            raise MmloraError(f"lora.projector=lora, but '{family.projector}' has no linear layers.")
        targets += projector
    return targets


def apply_lora(model, family: Family, cfg: LoraConfig):
    """Freeze the model, then wrap it with PEFT LoRA; returns the PeftModel."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    targets = resolve_targets(model, family, cfg)
    for param in model.parameters():
        param.requires_grad_(False)
    peft_config = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        # An anchored regex of the exact resolved names: PEFT matches it with fullmatch, so the
        # adapter config states precisely which layers carry LoRA.
        target_modules="^(" + "|".join(re.escape(t) for t in targets) + ")$",
        modules_to_save=[family.projector] if cfg.projector == "full" else None,
        task_type=None,
    )
    peft_model = get_peft_model(model, peft_config)
    adapted = {
        name.removeprefix("base_model.model.")
        for name, module in peft_model.named_modules()
        if hasattr(module, "lora_A") and len(module.lora_A) > 0
    }
    missing = set(targets) - adapted
    if missing:
        raise MmloraError(f"LoRA was not attached to: {sorted(missing)}")
    return peft_model


@dataclass
class ParameterCount:
    component: str
    trainable: int
    total: int


def component_of(name: str, family: Family) -> str:
    """vision, projector, language, or other (embeddings and lm_head count as language)."""
    plain = name.replace("base_model.model.", "").replace(".modules_to_save.default", "")
    plain = plain.replace(".original_module", "")
    if plain.startswith(family.projector + "."):
        return "projector"
    if plain.startswith(family.vision_tower + "."):
        return "vision"
    return "language"


def count_parameters(model, family: Family) -> list[ParameterCount]:
    """Trainable and total parameters per component, plus a total row."""
    rows = {c: ParameterCount(c, 0, 0) for c in ("vision", "projector", "language")}
    for name, param in model.named_parameters():
        row = rows[component_of(name, family)]
        row.total += param.numel()
        if param.requires_grad:
            row.trainable += param.numel()
    total = ParameterCount(
        "total", sum(r.trainable for r in rows.values()), sum(r.total for r in rows.values())
    )
    return [*rows.values(), total]


def format_parameter_table(counts: list[ParameterCount]) -> str:
    lines = [f"{'component':<10} {'trainable':>12} {'total':>14} {'share':>8}"]
    for row in counts:
        share = 100.0 * row.trainable / row.total if row.total else 0.0
        lines.append(f"{row.component:<10} {row.trainable:>12,} {row.total:>14,} {share:>7.2f}%")
    return "\n".join(lines)
