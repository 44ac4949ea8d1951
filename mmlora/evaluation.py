"""`mmlora eval`: generate on a data split, score with the task's metrics, write the report.

One run evaluates the base model, the fine-tuned model (base + LoRA adapter, merged), or both on
the same samples (`--compare-base`), and writes into one directory:
- `predictions.jsonl`: one line per sample (image, question, references, prediction and score;
  with both models also `base_prediction` / `base_score`); `mmlora score` reads it back;
- `metrics.json`: the task's metrics per model, their difference and per-group breakdowns;
- `report.md` and `report.html` (mmlora/report.py).
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mmlora.config import Recipe
from mmlora.data import Sample, load_samples
from mmlora.errors import MmloraError
from mmlora.metrics.task import PRIMARY_METRIC, TASK_METRICS, TaskScores, score_task

log = logging.getLogger(__name__)

BASE, FINE_TUNED = "base", "fine-tuned"
GROUP_FIELDS = ("question_type", "answer_type")
"""Row fields a breakdown groups by (VQAv2 annotations carry both)."""
MAX_QUESTION_GROUPS = 20
"""Without type fields, group by question text only when there are this few distinct questions."""
SPLITS = ("eval", "train")


@dataclass
class EvalItem:
    """One evaluated sample, as the report shows it."""

    source: str
    image: str
    """The image's path (or `<bytes>` etc. for inline images), as predictions.jsonl records it."""
    question: str
    references: list[str]
    groups: dict[str, str] = field(default_factory=dict)
    image_ref: object = None
    """The sample's image reference itself (path, bytes, PIL image), for thumbnails."""


@dataclass
class ModelRun:
    label: str
    """BASE or FINE_TUNED."""
    model: str
    """The base model id, or the adapter directory."""
    predictions: list[str]
    scores: TaskScores


@dataclass
class EvalReport:
    task: str
    split: str
    data_file: str
    items: list[EvalItem]
    runs: list[ModelRun]
    """Base first, then fine-tuned (either may be absent)."""
    adapter: str | None = None
    vqa_normalization: str = "always"
    """The VQA-accuracy rule the runs were scored with (eval.vqa_normalization)."""

    @property
    def primary(self) -> str:
        return PRIMARY_METRIC[self.task]

    def run(self, label: str) -> ModelRun | None:
        return next((r for r in self.runs if r.label == label), None)


def question_of(sample: Sample) -> str:
    """The text of the last user turn (what was asked)."""
    user = [m for m in sample.messages if m["role"] == "user"][-1]
    content = user["content"]
    return content if isinstance(content, str) else " ".join(
        part["text"] for part in content if part.get("type") == "text"
    )


def row_groups(samples: list[Sample]) -> list[dict[str, str]]:
    """`question_type` / `answer_type` of each sample's data row, where the row has them.

    Training has no use for these fields, so the data layer does not keep them; they are read
    back from the row that `sample.source` (`file:line`) names. Anything unreadable gives {}.
    """
    lines_of: dict[str, list[bytes]] = {}
    out = []
    for sample in samples:
        path, _, line = sample.source.rpartition(":")
        groups: dict[str, str] = {}
        if path and line.isdigit():
            if path not in lines_of:
                try:  # split on b"\n" only: the data layer numbers lines the same way
                    lines_of[path] = Path(path).read_bytes().split(b"\n")
                except OSError:
                    lines_of[path] = []
            lines = lines_of[path]
            try:
                row = json.loads(lines[int(line) - 1]) if 0 < int(line) <= len(lines) else None
            except ValueError:
                row = None
            if isinstance(row, dict):
                groups = {f: str(row[f]) for f in GROUP_FIELDS if isinstance(row.get(f), (str, int))}
        out.append(groups)
    return out


def _image_name(ref) -> str:
    if ref is None:
        return ""
    return str(ref) if isinstance(ref, (str, Path)) else f"<{type(ref).__name__}>"


def eval_items(samples: list[Sample]) -> list[EvalItem]:
    """What the report shows of each sample (its first image stands for all of them)."""
    items = []
    for sample, groups in zip(samples, row_groups(samples)):
        ref = sample.images[0] if sample.images else None
        items.append(EvalItem(sample.source, _image_name(ref), question_of(sample),
                              list(sample.references), groups, ref))
    return items


def breakdowns(report: EvalReport) -> list[dict]:
    """Mean primary score per group, per model: by question_type / answer_type where every row
    has one, else by question text when there are few distinct questions (2..20)."""
    fields = [f for f in GROUP_FIELDS if report.items and all(f in i.groups for i in report.items)]
    keys = {f: [i.groups[f] for i in report.items] for f in fields}
    keys = {f: values for f, values in keys.items() if len(set(values)) > 1}  # one group says nothing
    if not keys:
        questions = [i.question for i in report.items]
        if 2 <= len(set(questions)) <= MAX_QUESTION_GROUPS:
            keys = {"question": questions}
    result = []
    for by, values in keys.items():
        rows = []
        for group in sorted(set(values)):
            members = [k for k, v in enumerate(values) if v == group]
            row = {"group": group, "count": len(members)}
            for run in report.runs:
                row[run.label] = sum(run.scores.per_sample[k] for k in members) / len(members)
            rows.append(row)
        result.append({"by": by, "metric": report.primary, "rows": rows})
    return result


def _rule(report: EvalReport) -> dict:
    """The VQA-accuracy rule, next to every VQA number in metrics.json."""
    return {"vqa_normalization": report.vqa_normalization} if report.task == "vqa" else {}


def metrics_summary(report: EvalReport) -> dict:
    """What metrics.json holds."""
    summary = {
        "task": report.task, "split": report.split, "data": report.data_file,
        "count": len(report.items), "adapter": report.adapter, "primary_metric": report.primary,
        "models": {run.label: {"model": run.model, **run.scores.metrics, **_rule(report)} for run in report.runs},
    }
    summary.update(_rule(report))
    base, tuned = report.run(BASE), report.run(FINE_TUNED)
    if base and tuned:
        summary["difference"] = {
            name: tuned.scores.metrics[name] - base.scores.metrics[name] for name in TASK_METRICS[report.task]
        }
    summary["breakdowns"] = breakdowns(report)
    return summary


def prediction_records(report: EvalReport) -> list[dict]:
    """One predictions.jsonl record per sample; `prediction` is the last model's answer."""
    last, base = report.runs[-1], report.run(BASE)
    records = []
    for k, item in enumerate(report.items):
        record = {"source": item.source, "image": item.image, "question": item.question,
                  "references": item.references, **item.groups,
                  "prediction": last.predictions[k], "score": last.scores.per_sample[k],
                  "correct": last.scores.correct[k]}
        if base is not None and base is not last:
            record.update(base_prediction=base.predictions[k], base_score=base.scores.per_sample[k],
                          base_correct=base.scores.correct[k])
        records.append(record)
    return records


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


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
    from mmlora.adapter_fit import check_adapter_family
    from mmlora.infer import adapter_base_model
    from mmlora.modeling import detect_family
    from mmlora.processor_files import resolve_model_name

    check_adapter_family(adapter, detect_family(recipe.model.name, recipe.model), recipe.model.name)
    base = adapter_base_model(adapter)
    if resolve_model_name(base) != resolve_model_name(recipe.model.name):
        print(f"mmlora: warning: adapter {adapter} was trained on '{base}', evaluating it on "
              f"model.name='{recipe.model.name}'.", file=sys.stderr)


def use_trained_bounds(recipe: Recipe, adapter_dir: Path | None, recipe_sets_bounds: bool) -> None:
    """Evaluate at the pixel bounds the adapter (or the saved model folder) was trained with,
    unless the recipe sets its own; say so when the two differ."""
    from mmlora.processor_files import trained_bounds

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

    from mmlora.generate import generate_answers, generation_settings

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
    samples = load_samples(data_file, recipe.data, recipe.task)
    limit = limit if limit is not None else recipe.eval.limit
    if limit is not None:
        if limit <= 0:
            raise MmloraError(f"--limit: got {limit}, expected a positive number of samples.")
        samples = samples[:limit]
    items = eval_items(samples)
    references = [item.references for item in items]
    out = Path(output_dir) if output_dir else default_output_dir(recipe, adapter_dir, split)

    from mmlora.adapter_fit import check_adapter_fits
    from mmlora.modeling import load_model_and_processor

    use_trained_bounds(recipe, adapter_dir, recipe_sets_bounds)
    if adapter_dir is not None:
        _check_base_matches(recipe, adapter_dir)
    loaded = load_model_and_processor(recipe.model)
    if adapter_dir is not None:  # refused before anything is generated or an earlier report is replaced
        check_adapter_fits(adapter_dir, loaded.model, recipe.model.name)
    runs = []
    if adapter_dir is None or compare_base:
        runs.append(generate_run(BASE, recipe.model.name, loaded.model, loaded.processor, samples, recipe, references))
    if adapter_dir is not None:
        from mmlora.lora import load_adapter

        # Merged into the base weights (base predictions are done): generation at base speed.
        tuned = load_adapter(loaded.model, adapter_dir).merge_and_unload()
        runs.append(generate_run(FINE_TUNED, str(adapter_dir), tuned, loaded.processor, samples, recipe, references))
    report = EvalReport(recipe.task, split, str(data_file), items, runs, str(adapter_dir) if adapter_dir else None,
                        recipe.eval.vqa_normalization)
    write_outputs(report, out, recipe)
    return report, out


def write_outputs(report: EvalReport, out: Path, recipe: Recipe) -> None:
    """predictions.jsonl, metrics.json, report.md and report.html in `out`."""
    from mmlora.report import write_html, write_markdown

    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "predictions.jsonl", prediction_records(report))
    (out / "metrics.json").write_text(json.dumps(metrics_summary(report), indent=2) + "\n")
    write_markdown(report, out / "report.md", recipe.eval.report_examples)
    loss_png = Path(report.adapter) / "loss.png" if report.adapter else None
    write_html(report, out / "report.html", recipe.eval.report_max_cards,
               loss_png if loss_png and loss_png.is_file() else None)
