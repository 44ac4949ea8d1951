"""Dotted `section.key=value` overrides: recognising them, checking them, suggesting keys.

A wrong key is answered with the full dotted key it most likely means, searched across
sections (`lora.epochs` -> `train.epochs`), and the usual Hugging Face / PEFT spellings
(`lr`, `num_train_epochs`, `per_device_train_batch_size`, `lora_alpha`, ...) are answered with
mmlora's name for the same setting.

Those foreign names are *suggested, not accepted as aliases*, on purpose: every recipe field
has exactly one spelling, so the recipe.yaml saved with a run, the resume compatibility check
and `mmlora recipes fields` all speak of the same key; and several HF names do not mean the
same thing as the nearest mmlora field (`warmup_steps` counts steps where `train.warmup_ratio`
is a share of them), so silently mapping them would train something the user did not ask for.
The error shows the corrected override, ready to paste.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from typing import Any

import yaml

from mmlora.errors import MmloraError

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*")

# Names other fine-tuning tools (HF TrainingArguments, PEFT LoraConfig, LLaMA-Factory, TRL)
# use, and the mmlora key for the same setting, with a note where the meaning differs.
FOREIGN_NAMES: dict[str, tuple[str, str]] = {
    "lr": ("train.learning_rate", ""),
    "num_train_epochs": ("train.epochs", ""),
    "num_epochs": ("train.epochs", ""),
    "per_device_train_batch_size": ("train.batch_size", ""),
    "train_batch_size": ("train.batch_size", ""),
    "gradient_accumulation_steps": ("train.grad_accum", ""),
    "grad_accumulation_steps": ("train.grad_accum", ""),
    "warmup_steps": ("train.warmup_ratio", "a share of the total steps, e.g. 0.03, not a step count"),
    "lr_scheduler_type": ("train.lr_scheduler", ""),
    "evaluation_strategy": ("train.eval_strategy", ""),
    "dataloader_num_workers": ("train.num_workers", ""),
    "per_device_eval_batch_size": ("eval.batch_size", ""),
    "eval_batch_size": ("eval.batch_size", ""),
    "lora_r": ("lora.r", ""),
    "lora_rank": ("lora.r", ""),
    "rank": ("lora.r", ""),
    "lora_alpha": ("lora.alpha", ""),
    "lora_dropout": ("lora.dropout", ""),
    "target_modules": ("lora.targets", ""),
    "lora_target": ("lora.targets", ""),
    "model_name_or_path": ("model.name", ""),
    "model_name": ("model.name", ""),
    "max_seq_length": ("data.max_length", "text + visual tokens of one sample"),
    "cutoff_len": ("data.max_length", "text + visual tokens of one sample"),
    "train_file": ("data.train", ""),
    "dataset": ("data.train", ""),
    "eval_file": ("data.eval", ""),
    "validation_file": ("data.eval", ""),
    "eval_dataset": ("data.eval", ""),
}


def looks_like_override(token: str) -> bool:
    """True for `key=value` with a dotted identifier before the `=` (not a path like `a/b=c`)."""
    key, sep, _ = token.partition("=")
    return bool(sep) and _KEY.fullmatch(key.strip()) is not None


def recipe_keys() -> list[str]:
    """Every leaf field of a recipe as a full dotted key (`train.epochs`, `task`, ...)."""
    from mmlora.config import field_docs

    return [name for name, _help, _default in field_docs()]


def suggest_keys(dotted: str) -> list[str]:
    """The full dotted keys an unknown key most likely means (best first; may be empty)."""
    keys = recipe_keys()
    leaf = dotted.rsplit(".", 1)[-1]
    foreign = FOREIGN_NAMES.get(leaf.lower())
    if foreign:
        return [foreign[0]]
    # The right name in the wrong section (lora.epochs -> train.epochs; batch_size is in two).
    same_name = [k for k in keys if k.rsplit(".", 1)[-1] == leaf]
    if same_name:
        return same_name
    # A misspelling of the whole key (lora.rr -> lora.r, trian.epochs -> train.epochs) ...
    found = difflib.get_close_matches(dotted, keys, n=2, cutoff=0.75)
    # ... or of its last part, in any section (epoch -> train.epochs).
    leaves = {k.rsplit(".", 1)[-1] for k in keys}
    for close in difflib.get_close_matches(leaf, sorted(leaves), n=2, cutoff=0.6):
        found += [k for k in keys if k.rsplit(".", 1)[-1] == close and k not in found]
    section = dotted.rsplit(".", 1)[0] if "." in dotted else ""
    # Keys in the section the user named first, then the rest.
    return sorted(found, key=lambda k: not k.startswith(section + ".") if section else False)[:3]


def unknown_key_hint(dotted: str, value_text: str | None = None) -> str:
    """`Did you mean 'train.epochs'?` (with the corrected override when the value is known)."""
    suggestions = suggest_keys(dotted)
    if not suggestions:
        return " See `mmlora recipes fields` for every key."
    leaf = dotted.rsplit(".", 1)[-1].lower()
    best = suggestions[0]
    if leaf in FOREIGN_NAMES:
        note = FOREIGN_NAMES[leaf][1]
        if note:  # a different unit or meaning: the value cannot simply be carried over
            return f" mmlora calls this setting '{best}' ({note})."
        return f" mmlora calls this setting '{best}'" + (f": {best}={value_text}." if value_text is not None else ".")
    quoted = " or ".join(f"'{k}'" for k in suggestions)
    example = f" ({best}={value_text})" if value_text is not None and len(suggestions) == 1 else ""
    return f" Did you mean {quoted}{example}?"


def parse_value(assignment: str, raw: str) -> Any:
    """An override's value as YAML (`3` -> 3, `[a, b]` -> a list); empty text is ''."""
    if not raw.strip():
        return ""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as err:
        problem = str(getattr(err, "problem", None) or err).splitlines()[0]
        raise MmloraError(f"override '{assignment}': the value is not valid YAML ({problem}); "
                          "quote it, e.g. key='[text'.") from None


def check_override(assignment: str) -> None:
    """Check one `section.key=value` against the recipe's fields and types.

    The error names the override as typed (not the recipe file it was applied to), with the
    key it most likely meant.
    """
    from mmlora.config import Recipe, build_section, coerce_field

    if "=" not in assignment:
        raise MmloraError(f"Override '{assignment}' is not of the form key=value (e.g. train.epochs=3).")
    dotted, raw = (part.strip() for part in assignment.split("=", 1))
    value = parse_value(assignment, raw)
    keys = dotted.split(".")
    cls: Any = Recipe
    for depth, key in enumerate(keys):
        path = ".".join(keys[: depth + 1])
        hints = typing.get_type_hints(cls)
        if key not in hints:
            raise MmloraError(f"override '{assignment}': unknown key '{dotted}'.{unknown_key_hint(dotted, raw)}")
        tp = hints[key]
        last = depth == len(keys) - 1
        if dataclasses.is_dataclass(tp):
            if last:
                try:
                    build_section(tp, value or {}, path)
                except MmloraError as err:
                    raise MmloraError(f"override '{assignment}': {err}") from None
                return
            cls = tp
            continue
        if not last:
            raise MmloraError(f"override '{assignment}': '{path}' is a value, not a section.")
        try:
            coerce_field(value, tp, path)
        except MmloraError as err:
            raise MmloraError(f"override '{assignment}': {err}") from None


def overrides_named_in(message: str, overrides: list[str]) -> list[str]:
    """The overrides whose key a validation message mentions (to name them in the error)."""
    named = []
    for assignment in overrides:
        key = assignment.split("=", 1)[0].strip()
        if key and re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", message):
            named.append(assignment)
    return named
