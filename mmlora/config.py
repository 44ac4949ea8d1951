"""Recipes: YAML files mapped onto typed dataclasses, with dotted `key=value` overrides.

Every field carries its documentation in `metadata["help"]` so `mmlora recipes show` and the
README can print it, and every value is checked against the field's type (and allowed values)
when the recipe is loaded, long before any weights are.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mmlora.errors import MmloraError


def _doc(text: str, default: Any = dataclasses.MISSING, default_factory: Any = dataclasses.MISSING):
    """A dataclass field with its documentation attached."""
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class ModelConfig:
    name: str = _doc(
        "Hub id (Qwen/Qwen2-VL-2B-Instruct), local directory, or a built-in offline tiny id "
        "(tiny/qwen2-vl).",
        "tiny/qwen2-vl",
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = _doc(
        "Weights dtype. auto: bfloat16 on GPUs that support it, float32 otherwise (CPU).", "auto"
    )
    min_pixels: int = _doc(
        "Smallest image area in pixels after resizing. One visual token covers 28x28 pixels.",
        56 * 56,
    )
    max_pixels: int = _doc(
        "Largest image area in pixels after resizing; bounds visual tokens per image "
        "(max_pixels / 784) and so memory.",
        448 * 448,
    )
    revision: str | None = _doc("Hub revision (branch, tag or commit) for hub ids.", None)
    trust_remote_code: bool = _doc("Allow model code from the hub. Off unless you need it.", False)


@dataclass
class LoraConfig:
    r: int = _doc("LoRA rank: size of the low-rank update.", 8)
    alpha: float = _doc("LoRA alpha; the update is scaled by alpha / r.", 16.0)
    dropout: float = _doc("Dropout on the LoRA input.", 0.05)
    targets: list[str] = _doc(
        "Short names of the language tower's linear layers that get LoRA.",
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    projector: Literal["frozen", "lora", "full"] = _doc(
        "Vision-language projector (Qwen2-VL: model.visual.merger): frozen, LoRA on its linear "
        "layers, or fully trained (saved with the adapter).",
        "frozen",
    )


@dataclass
class DataConfig:
    train: str = _doc("Training data file (JSONL; see README for the row formats).", "")
    eval: str | None = _doc("Held-out data file used by evaluation and the demo.", None)
    image_root: str | None = _doc(
        "Directory that relative image paths resolve against (default: the data file's directory).",
        None,
    )
    system_prompt: str | None = _doc(
        "System message; None uses the chat template's default.", None
    )
    caption_prompt: str = _doc(
        "User prompt for captioning rows that carry no question.", "Describe the image."
    )
    max_length: int = _doc(
        "Longest tokenised sample (text + visual tokens). Longer samples are an error that names "
        "the row.",
        2048,
    )


@dataclass
class TrainConfig:
    output_dir: str = _doc("Where the adapter, processor, resolved recipe and logs go.", "runs/mmlora")
    epochs: float = _doc("Passes over the training data (ignored when max_steps > 0).", 1.0)
    max_steps: int = _doc("Stop after this many optimizer steps; -1 runs `epochs` epochs.", -1)
    batch_size: int = _doc("Samples per device per step.", 1)
    grad_accum: int = _doc("Gradient accumulation steps.", 1)
    learning_rate: float = _doc("Peak learning rate.", 1e-4)
    weight_decay: float = _doc("AdamW weight decay.", 0.0)
    warmup_ratio: float = _doc("Share of steps spent warming the learning rate up.", 0.03)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = _doc(
        "Learning-rate schedule.", "cosine"
    )
    seed: int = _doc("Seed for model init (tiny models), LoRA init and data order.", 42)
    logging_steps: int = _doc("Log the loss every N steps.", 10)
    gradient_checkpointing: bool = _doc(
        "Recompute activations in the backward pass: less memory, ~30% slower.", False
    )
    bf16: Literal["auto", "true", "false"] = _doc(
        "Mixed precision: auto uses bf16 on GPUs that support it.", "auto"
    )
    num_workers: int = _doc("DataLoader worker processes for image decoding.", 0)


@dataclass
class EvalConfig:
    max_new_tokens: int = _doc("Longest generated answer.", 32)
    batch_size: int = _doc("Samples per generation batch (left padded).", 8)
    limit: int | None = _doc("Evaluate at most this many samples (None: all).", None)


@dataclass
class Recipe:
    task: Literal["caption", "vqa"] = _doc("caption or vqa: picks the prompt and the metric.", "vqa")
    model: ModelConfig = _doc("The base model and its image resolution bounds.", default_factory=ModelConfig)
    lora: LoraConfig = _doc("What is trained, and how.", default_factory=LoraConfig)
    data: DataConfig = _doc("Where the data is and how it becomes chat samples.", default_factory=DataConfig)
    train: TrainConfig = _doc("The optimisation loop.", default_factory=TrainConfig)
    eval: EvalConfig = _doc("Generation settings for evaluation and the demo.", default_factory=EvalConfig)

    def to_dict(self) -> dict:
        """The recipe as plain data (what `save_recipe` writes)."""
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# Building dataclasses from untyped YAML, with errors that name the field.


def _closest(name: str, options: list[str]) -> str:
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return f" Did you mean '{match[0]}'?" if match else f" Valid keys: {', '.join(options)}."


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`; return it (ints widen to floats)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        # YAML reads `true` as a bool; fields like train.bf16 spell their choices as strings.
        candidate = str(value).lower() if isinstance(value, bool) else value
        if candidate in allowed:
            return candidate
    elif origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, where)
            except MmloraError:
                continue
    elif origin is list:
        item_type = typing.get_args(tp)[0]
        if isinstance(value, str) and item_type is str:
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            return [_coerce(item, item_type, f"{where}[{i}]") for i, item in enumerate(value)]
    elif tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise MmloraError(f"{where}: got {value!r}, expected {_describe(tp)}.")


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise MmloraError(f"{where or 'recipe'}: expected a mapping of keys, got {data!r}.")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise MmloraError(f"Unknown recipe key '{path}'.{_closest(str(key), names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value or {}, path)
        else:
            kwargs[key] = _coerce(value, tp, path)
    return cls(**kwargs)


def _validate(recipe: Recipe) -> None:
    """Checks across fields, and ranges the types cannot express."""
    positive = {
        "model.min_pixels": recipe.model.min_pixels,
        "model.max_pixels": recipe.model.max_pixels,
        "lora.r": recipe.lora.r,
        "data.max_length": recipe.data.max_length,
        "train.batch_size": recipe.train.batch_size,
        "train.grad_accum": recipe.train.grad_accum,
        "train.logging_steps": recipe.train.logging_steps,
        "eval.batch_size": recipe.eval.batch_size,
        "eval.max_new_tokens": recipe.eval.max_new_tokens,
    }
    for name, value in positive.items():
        if value <= 0:
            raise MmloraError(f"{name}: got {value}, expected a positive number.")
    if recipe.model.min_pixels > recipe.model.max_pixels:
        raise MmloraError(
            f"model.min_pixels ({recipe.model.min_pixels}) is larger than model.max_pixels "
            f"({recipe.model.max_pixels})."
        )
    if not 0.0 <= recipe.lora.dropout < 1.0:
        raise MmloraError(f"lora.dropout: got {recipe.lora.dropout}, expected 0 <= dropout < 1.")
    if not 0.0 <= recipe.train.warmup_ratio < 1.0:
        raise MmloraError(f"train.warmup_ratio: got {recipe.train.warmup_ratio}, expected 0 <= ratio < 1.")
    if recipe.train.learning_rate <= 0:
        raise MmloraError(f"train.learning_rate: got {recipe.train.learning_rate}, expected > 0.")
    if recipe.train.max_steps <= 0 and recipe.train.epochs <= 0:
        raise MmloraError("train.epochs must be > 0 when train.max_steps is -1.")
    if not recipe.lora.targets:
        raise MmloraError("lora.targets is empty: name at least one linear layer (e.g. q_proj).")
    if not recipe.data.train:
        raise MmloraError("data.train is empty: give the training data file.")


def apply_override(data: dict, assignment: str) -> None:
    """Apply one `section.key=value` override to raw recipe data (value parsed as YAML)."""
    if "=" not in assignment:
        raise MmloraError(f"Override '{assignment}' is not of the form key=value (e.g. train.epochs=3).")
    dotted, raw_value = assignment.split("=", 1)
    keys = dotted.strip().split(".")
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise MmloraError(f"Override '{assignment}': '{key}' is not a section.")
        node = child
    node[keys[-1]] = yaml.safe_load(raw_value) if raw_value.strip() else ""


def recipe_from_dict(data: dict, overrides: list[str] = (), source: str = "recipe") -> Recipe:
    """Build and validate a Recipe from raw data plus `key=value` overrides."""
    data = dict(data or {})
    for assignment in overrides:
        apply_override(data, assignment)
    try:
        recipe = _build(Recipe, data, "")
        _validate(recipe)
    except MmloraError as err:
        raise MmloraError(f"{source}: {err}") from None
    return recipe


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Load a YAML recipe (a path, or the name of a shipped recipe) and apply overrides.

    Relative data paths resolve against the current directory (as paths given on the command
    line do); `asset://...` names data shipped with mmlora, so shipped recipes run anywhere.
    """
    from mmlora.paths import resolve_recipe_path

    path = resolve_recipe_path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise MmloraError(f"{path}: not valid YAML ({err}).") from None
    return recipe_from_dict(data, overrides, source=str(path))


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    """Write the resolved recipe (every field, defaults included) as YAML."""
    Path(path).write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))


def field_docs(cls: type = Recipe, prefix: str = "") -> list[tuple[str, str, Any]]:
    """(dotted name, help, default) for every leaf field: the recipe reference."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            rows.extend(field_docs(hints[f.name], name + "."))
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append((name, f.metadata.get("help", ""), default))
    return rows
