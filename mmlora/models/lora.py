"""Attach LoRA with PEFT: which modules (targets, vision, projector, exclude), which variant
(rank, alpha, rsLoRA, DoRA, init), the optimizer's param groups (LoRA+, per-component learning
rates) and saving (PiSSA/OLoRA converted to plain LoRA, the adapted-module list).

Module names are resolved on the loaded model from the family description and handed to PEFT
as an anchored regex of exact names, so the adapter config states precisely which layers carry
LoRA and a selection that matches nothing is an error, never a silent no-op.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from mmlora.config.schema import LoraConfig
from mmlora.errors import MmloraError, is_pickle_refusal
from mmlora.models.families import Family, find_module, projector_modules

ALL_LINEAR = "all-linear"
PEFT_INIT = {"default": True, "gaussian": "gaussian", "pissa": "pissa_niter_16", "olora": "olora"}
"""lora.init -> PEFT's init_lora_weights. PiSSA uses the fast randomised SVD (16 iterations):
exact SVDs of a 7B model's layers take an hour on CPU, and the adapter's conversion back to plain
LoRA is exact whatever the initial factors are."""


@dataclass
class AdaptedModules:
    """What is trained: modules with LoRA per component, and modules trained fully."""

    lora: dict[str, list[str]] = field(default_factory=dict)
    full: list[str] = field(default_factory=list)

    @property
    def lora_modules(self) -> list[str]:
        return [name for names in self.lora.values() for name in names]

    def to_json(self) -> dict:
        return {"lora": self.lora, "full": self.full}


def linear_modules(model, prefix: str) -> list[str]:
    """Names of the linear layers at or under `prefix` (bitsandbytes layers subclass Linear)."""
    import torch

    return [
        name for name, module in model.named_modules()
        if (name == prefix or name.startswith(prefix + ".")) and isinstance(module, torch.nn.Linear)
    ]


def _is_short_name(text: str) -> bool:
    return re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text) is not None


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def target_spec(targets: list[str] | str) -> list[str] | str:
    """all-linear, a list of short names, or a regex string.

    The recipe parser reads `lora.targets=a,b` as a list and so also splits a regex at its
    commas (`\\d{1,2}`): a list that is not all short names is joined back into the regex.
    """
    if isinstance(targets, str):
        return [targets] if _is_short_name(targets) else targets
    if all(_is_short_name(t) for t in targets):
        return list(targets)
    return ",".join(targets)


def select_language_targets(names: list[str], targets: list[str] | str, family: Family) -> list[str]:
    """The language tower's linear layers that `lora.targets` selects."""
    spec = target_spec(targets)
    if spec == ALL_LINEAR:
        return names
    available = sorted({_short(n) for n in names})
    if isinstance(spec, str):
        chosen = [n for n in names if re.fullmatch(spec, n)]
        if not chosen:
            raise MmloraError(
                f"lora.targets regex {spec!r} matches no linear layer of the language tower "
                f"({family.language_model}); it is matched against full names such as {names[0]!r}."
            )
        return chosen
    unknown = [t for t in spec if t not in available]
    if unknown:
        raise MmloraError(
            f"lora.targets {unknown} match no linear layer of the language tower "
            f"({family.language_model}). Available: {', '.join(available)}."
        )
    return [n for n in names if _short(n) in spec]


def _apply_exclude(adapted: AdaptedModules, exclude: list[str]) -> None:
    for item in exclude:
        def hit(name: str) -> bool:
            return _short(name) == item if _is_short_name(item) else re.fullmatch(item, name) is not None

        if not any(hit(n) for n in adapted.lora_modules):
            raise MmloraError(f"lora.exclude {item!r} matches none of the layers selected for LoRA.")
        adapted.lora = {part: [n for n in names if not hit(n)] for part, names in adapted.lora.items()}


def resolve_adapted_modules(model, family: Family, cfg: LoraConfig) -> AdaptedModules:
    """Full module names that get LoRA (per component) or full training, on the loaded model."""
    find_module(model, family.language_model, family)
    find_module(model, family.vision_tower, family)
    projector = projector_modules(model, family)
    in_projector = lambda name: any(name == p or name.startswith(p + ".") for p in projector)  # noqa: E731
    adapted = AdaptedModules()
    adapted.lora["language"] = select_language_targets(
        linear_modules(model, family.language_model), cfg.targets, family)
    if cfg.vision == "lora":
        adapted.lora["vision"] = [n for n in linear_modules(model, family.vision_tower) if not in_projector(n)]
    if cfg.projector == "lora":
        adapted.lora["projector"] = [n for p in projector for n in linear_modules(model, p)]
        if not adapted.lora["projector"]:
            raise MmloraError(
                f"lora.projector=lora, but the {family.name} projector ({', '.join(family.projector)}) "
                "has no linear layers; use lora.projector=full to train it."
            )
    if cfg.projector == "full":
        adapted.full = projector
    _apply_exclude(adapted, cfg.exclude)
    if not adapted.lora["language"]:
        raise MmloraError("lora.exclude removed every language-tower layer: nothing would get LoRA there.")
    return adapted


def apply_lora(model, family: Family, cfg: LoraConfig):
    """Freeze the model, then wrap it with PEFT LoRA; returns the PeftModel."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model, prepare_model_for_kbit_training

    adapted = resolve_adapted_modules(model, family, cfg)
    for param in model.parameters():
        param.requires_grad_(False)
    if getattr(model, "is_quantized", False):
        # QLoRA: norms and other unquantised weights in fp32 for stable training.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    peft_config = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        bias=cfg.bias,
        use_rslora=cfg.use_rslora,
        use_dora=cfg.use_dora,
        init_lora_weights=PEFT_INIT[cfg.init],
        # PEFT fullmatches a string target: the adapter config names exactly these layers.
        target_modules="^(" + "|".join(re.escape(t) for t in adapted.lora_modules) + ")$",
        modules_to_save=adapted.full or None,
        task_type=None,
    )
    peft_model = get_peft_model(model, peft_config)
    attached = {
        name.removeprefix("base_model.model.")
        for name, module in peft_model.named_modules()
        if hasattr(module, "lora_A") and len(module.lora_A) > 0
    }
    missing = set(adapted.lora_modules) - attached
    if missing:
        raise MmloraError(f"LoRA was not attached to: {sorted(missing)}")
    peft_model.mmlora_adapted = adapted
    if cfg.init in ("pissa", "olora"):
        # The initial factors, to convert the trained adapter to plain LoRA when saving.
        peft_model.mmlora_initial_lora = {
            name: param.detach().clone() for name, param in peft_model.named_parameters()
            if ".lora_A." in name or ".lora_B." in name
        }
    return peft_model


def save_adapter(model, out_dir: Path, state_dict: dict | None = None) -> None:
    """Write the adapter (safetensors, loadable by plain `PeftModel.from_pretrained`) and
    adapted_modules.json. PiSSA/OLoRA adapters are converted first. `state_dict`: the model's
    weights when they are not in `model` itself (gathered from FSDP shards), else None.

    PiSSA/OLoRA move the initial factors B0 A0 out of the base weights, so their adapter only
    works on that modified base. The update they learned is BA - B0A0 = [B | -B0] [A ; A0]: a
    rank-2r LoRA with the same scale that applies to the original base model.
    """
    import torch

    out_dir = Path(out_dir)
    options = {"safe_serialization": True, "save_embedding_layers": False}
    # save_embedding_layers=False: embeddings are frozen, and "auto" makes PEFT look the base
    # model up on the hub to compare vocabularies (a warning offline, a network call online).
    initial = getattr(model, "mmlora_initial_lora", None)
    if not initial:
        model.save_pretrained(out_dir, state_dict=state_dict, **options)
    else:
        state = dict(state_dict) if state_dict is not None else model.state_dict()
        for name, start in initial.items():
            current = state[name]
            state[name] = (torch.cat([current, start.to(current)], 0) if ".lora_A." in name
                           else torch.cat([current, -start.to(current)], 1))
        config = model.peft_config["default"]
        saved = (config.r, config.lora_alpha, config.init_lora_weights)
        config.r, config.init_lora_weights = 2 * config.r, True
        config.lora_alpha *= math.sqrt(2) if config.use_rslora else 2  # same alpha/r or alpha/sqrt(r)
        try:
            model.save_pretrained(out_dir, state_dict=state, **options)
        finally:
            config.r, config.lora_alpha, config.init_lora_weights = saved
    adapted = getattr(model, "mmlora_adapted", None)
    if adapted is not None:
        (out_dir / "adapted_modules.json").write_text(json.dumps(adapted.to_json(), indent=2) + "\n")


def load_adapter(model, adapter_dir: str | Path):
    """`PeftModel.from_pretrained`, with a pickled adapter refused in one line.

    PEFT reads adapter_model.bin with torch.load(weights_only=True): a file holding pickled
    objects besides tensors is refused (safe), but as a raw UnpicklingError traceback."""
    import pickle

    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, str(adapter_dir))
    except (RuntimeError, pickle.UnpicklingError) as err:
        if not is_pickle_refusal(err):
            raise
        raise pickled_adapter_error(adapter_dir) from None


def pickled_adapter_error(adapter_dir: str | Path) -> MmloraError:
    """The one-line refusal of an adapter_model.bin that holds more than tensors."""
    return MmloraError(
        f"Refusing to load the adapter in '{adapter_dir}': adapter_model.bin holds pickled Python "
        "objects, not just tensors, and unpickling it could run code. Convert it to "
        "adapter_model.safetensors with a script you trust (safetensors.torch.save_file), "
        "then retry."
    )


def _compact(names: list[str]) -> str:
    """model.x.layers.{0..N}.a / .b ... shown once: digits folded, shared prefix factored out."""
    patterns = sorted({re.sub(r"\.\d+(?=\.|$)", ".*", n) for n in names})
    if len(patterns) == 1:
        return patterns[0]
    prefix = patterns[0][: len(min(patterns, key=len))]
    while not all(p.startswith(prefix) for p in patterns):
        prefix = prefix[:-1]
    prefix = prefix[: prefix.rfind(".") + 1]
    return prefix + "{" + ", ".join(p[len(prefix):] for p in patterns) + "}"


def format_adapted_modules(adapted: AdaptedModules) -> str:
    """One line per component: how many modules get LoRA or full training, and which."""
    lines = []
    for part, names in adapted.lora.items():
        lines.append(f"  {part:<10} LoRA on {len(names):>4} layers: {_compact(names)}")
    if adapted.full:
        lines.append(f"  {'projector':<10} fully trained: {', '.join(adapted.full)}")
    return "adapted modules (all names: adapted_modules.json in the output directory)\n" + "\n".join(lines)


@dataclass
class ParameterCount:
    component: str
    trainable: int
    total: int

    @property
    def frozen(self) -> int:
        return self.total - self.trainable


def component_of(name: str, family: Family) -> str:
    """vision, projector or language (embeddings and lm_head count as language)."""
    plain = name.replace("base_model.model.", "", 1).replace(".modules_to_save.default", "")
    plain = plain.replace(".original_module", "")
    if any(plain == p or plain.startswith(p + ".") for p in family.projector):
        return "projector"
    if plain.startswith(family.vision_tower + "."):
        return "vision"
    return "language"


def count_parameters(model, family: Family) -> list[ParameterCount]:
    """Trainable and total parameters per component, plus a total row.

    A fully trained module counts once: PEFT's frozen copy of its original weights (kept to
    switch the adapter off) is not part of the model that is trained or saved.
    """
    rows = {c: ParameterCount(c, 0, 0) for c in ("vision", "projector", "language")}
    for name, param in model.named_parameters():
        if ".original_module." in name:
            continue
        row = rows[component_of(name, family)]
        row.total += param.numel()
        if param.requires_grad:
            row.trainable += param.numel()
    total = ParameterCount(
        "total", sum(r.trainable for r in rows.values()), sum(r.total for r in rows.values())
    )
    return [*rows.values(), total]


def format_parameter_table(counts: list[ParameterCount]) -> str:
    lines = [f"{'component':<10} {'trainable':>12} {'frozen':>14} {'total':>14} {'share':>8}"]
    for row in counts:
        share = 100.0 * row.trainable / row.total if row.total else 0.0
        lines.append(f"{row.component:<10} {row.trainable:>12,} {row.frozen:>14,} {row.total:>14,} {share:>7.2f}%")
    return "\n".join(lines)


def optimizer_param_groups(model, family: Family, cfg: LoraConfig, learning_rate: float,
                           weight_decay: float, decay_names: set[str]) -> list[dict]:
    """Trainable parameters grouped by (component, LoRA B or not, decayed or not).

    Projector and vision parameters take lora.projector_lr / lora.vision_lr when set; LoRA+
    multiplies the learning rate of every B matrix by lora.loraplus_lr_ratio.
    """
    groups: dict[tuple, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        component = component_of(name, family)
        lr = {"projector": cfg.projector_lr, "vision": cfg.vision_lr}.get(component) or learning_rate
        is_b = ".lora_B." in name
        if is_b and cfg.loraplus_lr_ratio:
            lr *= cfg.loraplus_lr_ratio
        decay = weight_decay if name in decay_names else 0.0
        group = groups.setdefault((component, is_b, decay), {
            "params": [], "lr": lr, "weight_decay": decay, "name": f"{component}{' lora_B' if is_b else ''}",
        })
        group["params"].append(param)
    return list(groups.values())


def install_param_groups(trainer, family: Family, cfg: LoraConfig) -> None:
    """Make `trainer` build its optimizer from `optimizer_param_groups` when LoRA+ or a
    per-component learning rate is set (else the Trainer's own groups are kept).

    The Trainer still picks the optimizer class and its arguments (train args), and its
    scheduler scales every group's learning rate alike, so the ratios hold throughout.
    """
    if cfg.loraplus_lr_ratio is None and cfg.projector_lr is None and cfg.vision_lr is None:
        return

    def create_optimizer(model=None):
        if trainer.optimizer is None:
            opt_model = trainer.model if model is None else model
            decay = set(trainer.get_decay_parameter_names(opt_model))
            groups = optimizer_param_groups(opt_model, family, cfg, trainer.args.learning_rate,
                                            trainer.args.weight_decay, decay)
            optimizer_cls, kwargs = trainer.get_optimizer_cls_and_kwargs(trainer.args, opt_model)
            trainer.optimizer = optimizer_cls(groups, **kwargs)
        return trainer.optimizer

    trainer.create_optimizer = create_optimizer
