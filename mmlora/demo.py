"""`mmlora demo`: fine-tune the tiny model offline and show what changed, before vs after."""

from __future__ import annotations

import copy
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mmlora.config.loading import load_recipe, save_recipe
from mmlora.config.schema import Recipe
from mmlora.data.loading import load_samples
from mmlora.data.samples import Sample
from mmlora.errors import MmloraError
from mmlora.evaluation.generate import exact_match_accuracy, generate_answers
from mmlora.training.checkpoints import replace_folder


@dataclass
class DemoResult:
    accuracy_before: float
    accuracy_after: float
    questions: list[str]
    references: list[str]
    before: list[str]
    after: list[str]
    output_dir: str


def question_of(sample: Sample) -> str:
    """The text of the last user turn (what was asked)."""
    user = [m for m in sample.messages if m["role"] == "user"][-1]
    content = user["content"]
    return content if isinstance(content, str) else " ".join(
        part["text"] for part in content if part.get("type") == "text"
    )


def evaluate_samples(model, processor, samples: list[Sample], recipe: Recipe) -> tuple[list[str], float]:
    answers = generate_answers(
        model, processor, samples, recipe.eval.batch_size, recipe.eval.max_new_tokens, progress=True
    )
    return answers, exact_match_accuracy(answers, samples)


RUN_FILES = ("recipe.yaml", "data_report.json", "adapter_config.json")
"""Any of these marks a folder as an mmlora run folder, which a demo may replace."""


def check_replaceable(out: Path) -> None:
    """The demo replaces its output folder as a whole: only an empty folder or an earlier run's."""
    out = out.resolve()
    if out == Path.cwd().resolve() or out in Path.cwd().resolve().parents:
        raise MmloraError(f"train.output_dir={out} is the current directory or above it: the demo "
                          "replaces its output folder as a whole; choose a folder of its own.")
    if out.exists() and any(out.iterdir()) and not any((out / name).exists() for name in RUN_FILES):
        raise MmloraError(f"'{out}' holds files that no mmlora run wrote; the demo replaces its "
                          "output folder as a whole: choose another train.output_dir or empty it.")


def staging_dir(out: Path) -> Path:
    """A sibling of `out` (same filesystem, so the final rename is atomic)."""
    return out.resolve().with_name(f".{out.resolve().name}.demo-staging")


def swap_in(staged: Path, out: Path) -> None:
    """Replace `out` by `staged` (checkpoints.replace_folder: `out` is all old or all new)."""
    out = out.resolve()
    replace_folder(staged, out, out.with_name(f".{out.name}.demo-old"))


def before_and_after(recipe: Recipe) -> DemoResult:
    """Measure exact match on the eval split, train, measure again (same samples, same model).

    The demo is meant to be re-run: it trains into a staging folder next to train.output_dir
    and swaps it in when done, so the output folder never mixes two runs (an old adapter beside
    new metrics), and an interrupted demo leaves the previous output as it was."""
    from mmlora.models.loading import load_model_and_processor
    from mmlora.training.train import train

    if not recipe.data.eval:
        raise MmloraError("The demo needs data.eval in the recipe to measure before and after.")
    out = Path(recipe.train.output_dir)
    check_replaceable(out)
    eval_samples = load_samples(recipe.data.eval, recipe.data, recipe.task)
    if recipe.eval.limit:
        eval_samples = eval_samples[: recipe.eval.limit]
    staged = staging_dir(out)
    shutil.rmtree(staged, ignore_errors=True)  # an earlier demo that was killed
    staged_recipe = copy.deepcopy(recipe)
    staged_recipe.train.output_dir = str(staged)
    try:
        loaded = load_model_and_processor(recipe.model)
        before, acc_before = evaluate_samples(loaded.model, loaded.processor, eval_samples, recipe)
        # LoRA's B starts at zero, so the model trained next starts exactly at the one measured above.
        result = train(staged_recipe, loaded=loaded, shown_dir=out)  # lines name where the files will be
        if result.interrupted_by is not None:
            raise KeyboardInterrupt
        after, acc_after = evaluate_samples(result.model, loaded.processor, eval_samples, recipe)
        save_recipe(recipe, staged / "recipe.yaml")  # the output_dir it will have after the swap
        swap_in(staged, out)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        print(f"mmlora: demo stopped; {out} is left as it was.", file=sys.stderr)
        raise
    return DemoResult(
        acc_before, acc_after, [question_of(s) for s in eval_samples],
        [s.references[0] for s in eval_samples], before, after, str(out),
    )


def format_report(result: DemoResult, n_examples: int = 8) -> str:
    """A table of held-out questions with answers before and after, and the two accuracies."""
    rows = [f"{'question':<32} {'reference':<10} {'before':<22} {'after':<10}"]
    for q, ref, b, a in list(zip(result.questions, result.references, result.before, result.after))[:n_examples]:
        rows.append(f"{q:<32} {ref:<10} {b[:22]:<22} {a[:10]:<10}")
    rows.append("")
    rows.append(f"exact match on {len(result.questions)} held-out questions: "
                f"before {100 * result.accuracy_before:.1f}%  ->  after {100 * result.accuracy_after:.1f}%")
    rows.append(f"adapter saved in {result.output_dir}")
    return "\n".join(rows)


def run_demo(recipe_name: str = "tiny_vqa", overrides: list[str] = ()) -> DemoResult:
    start = time.time()
    recipe = load_recipe(recipe_name, overrides)
    result = before_and_after(recipe)
    print()
    print(format_report(result))
    print(f"demo took {time.time() - start:.0f} s")
    return result
