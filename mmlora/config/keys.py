"""Which recipe key a wrong one most likely means, across sections and other tools' spellings.

`lora.epochs` -> `train.epochs`; the usual Hugging Face / PEFT names (`lr`, `num_train_epochs`,
`lora_alpha`, ...) are answered with mmlora's name for the same setting: suggested, never accepted
as aliases (mmlora/config/overrides.py says why).
"""

from __future__ import annotations

import difflib

from mmlora.config.schema import field_docs

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


def recipe_keys() -> list[str]:
    """Every leaf field of a recipe as a full dotted key (`train.epochs`, `task`, ...)."""
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
