"""`mmlora eval`: generate on a data split, score with the task's metrics, write the report.

One run evaluates the base model, the fine-tuned model (base + LoRA adapter, merged), or both on
the same samples (`--compare-base`), and writes into one directory:
- `predictions.jsonl`: one line per sample (image, question, references, prediction and score;
  with both models also `base_prediction` / `base_score`); `mmlora score` reads it back;
- `metrics.json`: the task's metrics per model, their difference and per-group breakdowns;
- `report.md` and `report.html` (mmlora/evaluation/report.py).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from mmlora.config.schema import Recipe
from mmlora.config.sources import describe_data
from mmlora.data.loading import load_samples
from mmlora.data.samples import Sample
from mmlora.errors import MmloraError
from mmlora.evaluation.metrics.task import score_task
from mmlora.evaluation.results import (
    BASE, EvalReport, FINE_TUNED, ModelRun, eval_items, metrics_summary, prediction_records, write_jsonl,
)

log = logging.getLogger(__name__)

SPLITS = ("eval", "train")


def resolve_split(recipe: Recipe, split: str) -> str:
    """The data of a split name (`eval`, `train`), or a data file / folder given directly."""
    if split in SPLITS:
        value = getattr(recipe.data, split)
        if not value:
            raise MmloraError(f"--split {split}: the recipe has no data.{split}; set it or pass a JSONL file.")
        return value
    if Path(split).exists():
        return split
    raise MmloraError(f"--split {split!r}: use {' or '.join(SPLITS)}, or the path of a data file or folder.")


def find_adapter(recipe: Recipe, adapter: str | None) -> Path | None:
    """The adapter to evaluate: --adapter, else the recipe's train.output_dir if it holds one."""
    if adapter:
        path = Path(adapter)
        if not (path / "adapter_config.json").is_file():
            raise MmloraError(f"--adapter {adapter}: not an adapter directory (no adapter_config.json). "
                              "Pass the train.output_dir of a finished `mmlora train`.")
        return path
    default = Path(recipe.train.output_dir)
    return default if (default / "adapter_config.json").is_file() else None


def default_output_dir(recipe: Recipe, adapter_dir: Path | None, split: str) -> Path:
    """ADAPTER/eval_SPLIT; for the base model alone OUTPUT_DIR_base/eval_SPLIT, so an evaluation
    never makes train.output_dir non-empty before training (train refuses non-empty dirs)."""
    name = f"eval_{Path(split).stem}"
    if adapter_dir is not None:
        return adapter_dir / name
    return Path(str(Path(recipe.train.output_dir)) + "_base") / name


def _check_base_matches(recipe: Recipe, adapter: Path) -> None:
    """Refuse an adapter of another family before any weight loads; warn when only the base's
    name differs (e.g. an instruct vs a base checkpoint of one architecture)."""
    from mmlora.models.adapter_fit import adapter_base_model, check_adapter_family
    from mmlora.models.loading import detect_family
    from mmlora.models.processor_files import resolve_model_name

    check_adapter_family(adapter, detect_family(recipe.model.name, recipe.model), recipe.model.name)
    base = adapter_base_model(adapter)
    if resolve_model_name(base) != resolve_model_name(recipe.model.name):
        print(f"mmlora: warning: adapter {adapter} was trained on '{base}', evaluating it on "
              f"model.name='{recipe.model.name}'.", file=sys.stderr)


def use_trained_bounds(recipe: Recipe, adapter_dir: Path | None, recipe_sets_bounds: bool) -> None:
    """Evaluate at the pixel bounds the adapter (or the saved model folder) was trained with,
    unless the recipe sets its own; say so when the two differ."""
    from mmlora.models.processor_files import trained_bounds

    trained = trained_bounds(adapter_dir, recipe.model.name)
    current = (recipe.model.min_pixels, recipe.model.max_pixels)
    if trained is None or trained == current:
        return
    where = adapter_dir or recipe.model.name
    if recipe_sets_bounds:
        print(f"mmlora: warning: {where} was trained with min/max_pixels {trained[0]}/{trained[1]}; "
              f"evaluating at {current[0]}/{current[1]} as the recipe sets.", file=sys.stderr)
        return
    recipe.model.min_pixels, recipe.model.max_pixels = trained
    print(f"mmlora: using the trained min/max_pixels {trained[0]}/{trained[1]} of {where}.", file=sys.stderr)


def generate_run(label: str, name: str, model, processor, samples: list[Sample], recipe: Recipe,
                 references: list[list[str]]) -> ModelRun:
    """Generate every sample's answer with `model` and score the answers."""
    import torch

    from mmlora.evaluation.generate import generate_answers, generation_settings

    torch.manual_seed(recipe.train.seed)  # only matters with eval.do_sample
    predictions = generate_answers(model, processor, samples, recipe.eval.batch_size, progress=True,
                                   settings=generation_settings(recipe.eval), desc=f"generating ({label})")
    scores = score_task(recipe.task, predictions, references, recipe.eval.vqa_normalization)
    return ModelRun(label, name, predictions, scores)


def run_eval(recipe: Recipe, adapter: str | None = None, compare_base: bool = False, split: str = "eval",
             limit: int | None = None, output_dir: str | None = None,
             recipe_sets_bounds: bool = True) -> tuple[EvalReport, Path]:
    """Run `mmlora eval`: generate, score, write the four files; returns the report and its folder.

    `recipe_sets_bounds=False` (the recipe leaves model.min/max_pixels at their defaults) makes
    the adapter's or saved model folder's trained bounds apply."""
    data_file = resolve_split(recipe, split)
    adapter_dir = find_adapter(recipe, adapter)
    if adapter_dir is None and not compare_base:
        print(f"mmlora: no adapter in {recipe.train.output_dir} (train first or pass --adapter): "
              "evaluating the base model only.", file=sys.stderr)
    if adapter_dir is None and compare_base:
        raise MmloraError(f"--compare-base needs an adapter: pass --adapter DIR, or train first so "
                          f"{recipe.train.output_dir} holds one.")
    samples = load_samples(data_file, recipe.data, recipe.task, where=f"data.{split}" if split in SPLITS else "--split")
    limit = limit if limit is not None else recipe.eval.limit
    if limit is not None:
        if limit <= 0:
            raise MmloraError(f"--limit: got {limit}, expected a positive number of samples.")
        samples = samples[:limit]
    items = eval_items(samples)
    references = [item.references for item in items]
    out = Path(output_dir) if output_dir else default_output_dir(recipe, adapter_dir, split)

    from mmlora.models.adapter_fit import check_adapter_fits
    from mmlora.models.loading import load_model_and_processor

    use_trained_bounds(recipe, adapter_dir, recipe_sets_bounds)
    if adapter_dir is not None:
        _check_base_matches(recipe, adapter_dir)
    loaded = load_model_and_processor(recipe.model)
    if adapter_dir is not None:  # refused before anything is generated or an earlier report is replaced
        check_adapter_fits(adapter_dir, loaded.model, recipe.model.name)
    runs = []
    both = adapter_dir is not None and compare_base
    store = shared_feature_store(loaded.model, loaded.family, recipe) if both else None
    if adapter_dir is None or compare_base:
        runs.append(generate_run(BASE, recipe.model.name, loaded.model, loaded.processor, samples, recipe, references))
    if adapter_dir is not None:
        from mmlora.models.lora import load_adapter

        # Merged into the base weights (base predictions are done): generation at base speed.
        tuned = load_adapter(loaded.model, adapter_dir).merge_and_unload()
        if store is not None:
            shared_feature_store(tuned, loaded.family, recipe, store)
        runs.append(generate_run(FINE_TUNED, str(adapter_dir), tuned, loaded.processor, samples, recipe, references))
    report = EvalReport(recipe.task, split, describe_data(data_file), items, runs, str(adapter_dir) if adapter_dir else None,
                        recipe.eval.vqa_normalization)
    write_outputs(report, out, recipe)
    return report, out


def shared_feature_store(model, family, recipe: Recipe, store=None):
    """--compare-base: each image's features computed once for both models (train.vision_cache).

    Installed on the base model first, then on the merged one: the store is kept when the tower
    and projector weights are unchanged (same namespace), and a new one is opened when the
    adapter trained them, so the fine-tuned model never reads the base model's features."""
    from mmlora.models.vision_cache import (
        install_vision_cache, namespace_of, open_recipe_store, recipe_bounds, why_not_cacheable,
    )

    if recipe.train.vision_cache == "off" or why_not_cacheable(model, family, training=False) is not None:
        return None
    if store is None or namespace_of(model, family, recipe_bounds(recipe))[0] != store.namespace:
        store = open_recipe_store(model, family, recipe)
    install_vision_cache(model, family, store)
    return store


def write_outputs(report: EvalReport, out: Path, recipe: Recipe) -> None:
    """predictions.jsonl, metrics.json, report.md and report.html in `out`."""
    from mmlora.evaluation.report import write_html, write_markdown

    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "predictions.jsonl", prediction_records(report))
    (out / "metrics.json").write_text(json.dumps(metrics_summary(report), indent=2) + "\n")
    write_markdown(report, out / "report.md", recipe.eval.report_examples)
    loss_png = Path(report.adapter) / "loss.png" if report.adapter else None
    write_html(report, out / "report.html", recipe.eval.report_max_cards,
               loss_png if loss_png and loss_png.is_file() else None)
