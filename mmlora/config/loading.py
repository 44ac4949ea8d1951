"""Recipes from YAML files: typed (mmlora/config/schema.py), validated across fields, with dotted
`key=value` overrides applied first.

Every value is checked against its field's type (and allowed values) when the recipe is loaded,
long before any weights are.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from mmlora.config.overrides import check_override, overrides_named_in, parse_value
from mmlora.config.paths import resolve_recipe_path
from mmlora.config.schema import Recipe
from mmlora.config.sources import data_sources
from mmlora.config.values import build_section
from mmlora.errors import MmloraError


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
        "train.max_bad_steps": recipe.train.max_bad_steps,
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
    if recipe.train.num_workers < -1:
        raise MmloraError(f"train.num_workers: got {recipe.train.num_workers}, expected -1 (auto) or 0 or more.")
    from mmlora.config.sizes import parse_bytes

    parse_bytes(recipe.train.vision_cache_memory, "train.vision_cache_memory")
    if recipe.train.max_steps <= 0 and recipe.train.epochs <= 0:
        raise MmloraError("train.epochs must be > 0 when train.max_steps is -1.")
    if not recipe.lora.targets:
        raise MmloraError("lora.targets is empty: name at least one linear layer (e.g. q_proj).")
    _validate_lora(recipe)
    if not recipe.data.train:
        raise MmloraError("data.train is empty: give the training data file.")
    if "{question}" not in recipe.data.question_template:
        raise MmloraError("data.question_template must contain {question} (where the question goes).")
    from mmlora.data.formats import parse_column_map

    parse_column_map(recipe.data.column_map)
    _validate_sources(recipe)
    _validate_eval(recipe)


def _validate_sources(recipe: Recipe) -> None:
    """data.train / data.eval entries (mmlora/config/sources.py) and what a mixture or
    data.streaming cannot be combined with."""
    from mmlora.data.formats import parse_column_map

    train = data_sources(recipe.data.train, "data.train")
    for source in train + (data_sources(recipe.data.eval, "data.eval") if recipe.data.eval else []):
        if source.column_map is not None:
            parse_column_map(list(source.column_map))
    if isinstance(recipe.data.eval, list):
        for i, entry in enumerate(recipe.data.eval):
            if isinstance(entry, dict) and entry.get("weight") is not None:
                raise MmloraError(f"data.eval[{i}].weight: data.eval is never sampled (every source whole, in "
                                  "order), so a weight would change nothing; remove it.")
    if len(train) > 1 and recipe.data.group_by_length:
        raise MmloraError("data.group_by_length cannot be combined with a mixture in data.train (the weighted "
                          "draw changes every epoch); set data.group_by_length=false or use one source.")
    if recipe.data.streaming and recipe.train.max_steps <= 0:
        raise MmloraError("data.streaming=true needs train.max_steps (a streamed set has no known length, so "
                          "epochs cannot be counted): set train.max_steps, e.g. train.max_steps=1000.")
    if recipe.data.streaming and recipe.data.group_by_length:
        raise MmloraError("data.group_by_length needs the pre-scan's lengths: it cannot be combined with data.streaming.")


def _validate_lora(recipe: Recipe) -> None:
    """LoRA knobs that only make sense together (mmlora/models/lora.py applies them)."""
    import re

    lora = recipe.lora
    for name, value in {"lora.loraplus_lr_ratio": lora.loraplus_lr_ratio, "lora.projector_lr": lora.projector_lr,
                        "lora.vision_lr": lora.vision_lr}.items():
        if value is not None and value <= 0:
            raise MmloraError(f"{name}: got {value}, expected a positive number.")
    if lora.projector_lr is not None and lora.projector == "frozen":
        raise MmloraError("lora.projector_lr is set but lora.projector=frozen: nothing there is trained.")
    if lora.vision_lr is not None and lora.vision == "frozen":
        raise MmloraError("lora.vision_lr is set but lora.vision=frozen: nothing there is trained.")
    if lora.init in ("pissa", "olora") and lora.use_dora:
        raise MmloraError(f"lora.init={lora.init} cannot be combined with lora.use_dora: the trained "
                          "adapter could not be converted to one that applies to the original base model.")
    if lora.init in ("pissa", "olora") and recipe.model.quantization != "none":
        raise MmloraError(f"lora.init={lora.init} needs the unquantized base weights (it decomposes "
                          "them); use model.quantization=none or lora.init=default.")
    from mmlora.models.lora import target_spec

    spec = target_spec(lora.targets)
    for pattern in ([spec] if isinstance(spec, str) else []) + lora.exclude:
        try:
            re.compile(pattern)
        except re.error as err:
            raise MmloraError(f"lora: {pattern!r} is not a valid regex ({err}).") from None


def _validate_eval(recipe: Recipe) -> None:
    """Generation settings, evaluation intervals and eval.best_metric (mmlora/training/eval_callback.py)."""
    from mmlora.evaluation.metrics.task import TASK_METRICS

    e, t = recipe.eval, recipe.train
    for name, value in {"eval.num_beams": e.num_beams, "eval.generate_subset": e.generate_subset,
                        "train.eval_steps": t.eval_steps}.items():
        if value <= 0:
            raise MmloraError(f"{name}: got {value}, expected a positive number.")
    for name, value in {"eval.generate_steps": e.generate_steps, "eval.report_examples": e.report_examples,
                        "eval.report_max_cards": e.report_max_cards}.items():
        if value < 0:
            raise MmloraError(f"{name}: got {value}, expected 0 or more.")
    if e.temperature <= 0 or not 0 < e.top_p <= 1 or e.repetition_penalty <= 0:
        raise MmloraError("eval.temperature and eval.repetition_penalty must be > 0, eval.top_p in (0, 1].")
    if e.best_metric is None:
        return
    name = e.best_metric.removeprefix("eval_")
    allowed = ("loss", *TASK_METRICS[recipe.task])
    if name not in allowed:
        raise MmloraError(f"eval.best_metric: got {e.best_metric!r}, expected one of {', '.join(allowed)} "
                          f"for task {recipe.task}.")
    if not recipe.data.eval:
        raise MmloraError("eval.best_metric needs data.eval: the held-out data it is measured on.")
    if name == "loss" and t.eval_strategy == "never":
        raise MmloraError("eval.best_metric=loss needs train.eval_strategy steps or epoch.")
    if name != "loss" and e.generate_steps == 0:
        raise MmloraError(f"eval.best_metric={name} is measured by generation during training: set "
                          "eval.generate_steps (e.g. 100) so there is more than the final model to compare.")


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
    node[keys[-1]] = parse_value(assignment, raw_value)


def recipe_from_dict(data: dict, overrides: list[str] = (), source: str = "recipe") -> Recipe:
    """Build and validate a Recipe from raw data plus `key=value` overrides."""
    return _build(data, overrides, source)[0]


def _build(data: dict, overrides: list[str], source: str) -> tuple[Recipe, dict]:
    """The validated Recipe and the raw data it was built from (overrides applied)."""
    data = dict(data or {})
    for assignment in overrides:
        check_override(assignment)  # a bad override is named as typed, not as the recipe file
        apply_override(data, assignment)
    try:
        recipe = build_section(Recipe, data, "")
        _validate(recipe)
    except MmloraError as err:
        named = overrides_named_in(str(err), list(overrides))
        where = f"{source} with override {', '.join(named)}" if named else source
        raise MmloraError(f"{where}: {err}") from None
    return recipe, data


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Load a YAML recipe (a path, or the name of a shipped recipe) and apply overrides.

    Relative data paths resolve against the current directory (as paths given on the command
    line do); `asset://...` names data shipped with mmlora, so shipped recipes run anywhere.
    """
    return load_recipe_and_set_keys(path, overrides)[0]


def load_recipe_and_set_keys(path: str | Path, overrides: list[str] = ()) -> tuple[Recipe, frozenset[str]]:
    """`load_recipe`, and the dotted keys (`model.max_pixels`) the file or an override sets: the
    fields not left at their defaults. One read and one parse of the file and the overrides."""
    path = resolve_recipe_path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise MmloraError(f"{path}: not valid YAML ({err}).") from None
    recipe, data = _build(data, overrides, source=str(path))
    keys = {f"{section}.{key}" for section, values in data.items() if isinstance(values, dict) for key in values}
    return recipe, frozenset(keys | {section for section, values in data.items() if not isinstance(values, dict)})


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    """Write the resolved recipe (every field, defaults included) as YAML."""
    Path(path).write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
