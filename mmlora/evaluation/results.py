"""What an evaluation produced: the items, each model's predictions and scores, and the views of
them that metrics.json, predictions.jsonl and the reports share (breakdowns, records).

Built by `mmlora eval` (mmlora/evaluation/run.py) and by the final evaluation of a training run
(mmlora/training/eval_callback.py); read by the reports (mmlora/evaluation/report.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from mmlora.data.samples import Sample
from mmlora.evaluation.metrics.task import PRIMARY_METRIC, TASK_METRICS, TaskScores

BASE, FINE_TUNED = "base", "fine-tuned"
GROUP_FIELDS = ("question_type", "answer_type")
"""Row fields a breakdown groups by (VQAv2 annotations carry both)."""
MAX_QUESTION_GROUPS = 20
"""Without type fields, group by question text only when there are this few distinct questions."""


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
