"""The evaluation report: `report.md` (tables) and a self-contained `report.html` (sample cards).

report.html needs nothing but itself: styles and the filter script are inline, images are
embedded as small JPEG thumbnails (data: URIs), and it links to nothing outside the file, so it
can be mailed, attached to an issue or opened offline.
"""

from __future__ import annotations

import base64
import html
import io
from collections import Counter
from pathlib import Path

from mmlora.evaluation.metrics.task import TASK_METRICS
from mmlora.evaluation.results import BASE, EvalReport, FINE_TUNED, breakdowns

METRIC_NAMES = {
    "vqa_accuracy": "VQA accuracy", "exact_match": "exact match", "anls": "ANLS",
    "bleu_1": "BLEU-1", "bleu_2": "BLEU-2", "bleu_3": "BLEU-3", "bleu_4": "BLEU-4",
    "rouge_l": "ROUGE-L", "cider_d": "CIDEr-D",
}
SCALE_NOTE = (
    "Scores are x100, as papers print them. VQA accuracy: the official VQA evaluation "
    "(min(#humans who gave the answer / 3, 1), averaged over leave-one-out subsets), with the answer "
    "normalisation (punctuation, articles, number words, contractions) applied as its label says: "
    "'always' to the prediction and every answer, 'official' only when the annotators disagree, as "
    "vqaEval.py does. Exact match: normalised prediction equals any normalised reference; ANLS: "
    "ST-VQA/DocVQA (best over references). "
    "BLEU, ROUGE-L, CIDEr-D: as the COCO caption evaluation computes them (METEOR and SPICE need "
    "Java and are not computed)."
)


def metric_label(report: EvalReport, name: str) -> str:
    """`VQA accuracy (official)`: the VQA-accuracy number always carries its normalisation rule."""
    if name == "vqa_accuracy":
        return f"{METRIC_NAMES[name]} ({report.vqa_normalization})"
    return METRIC_NAMES[name]
THUMBNAIL_PX = 192


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _diff(value: float) -> str:
    return f"{100 * value:+.1f}"


def format_references(references: list[str], limit: int = 5) -> str:
    """`yes x7, no x3`: repeated answers (VQA's 10 human answers) counted, at most `limit` shown."""
    counted = Counter(references).most_common()
    parts = [f"{text} x{n}" if n > 1 else text for text, n in counted[:limit]]
    if len(counted) > limit:
        parts.append(f"+{len(counted) - limit} more")
    return ", ".join(parts)


def metric_rows(report: EvalReport) -> list[list[str]]:
    """[name, value per model..., difference] for each of the task's metrics."""
    base, tuned = report.run(BASE), report.run(FINE_TUNED)
    rows = []
    for name in TASK_METRICS[report.task]:
        row = [metric_label(report, name)] + [_pct(run.scores.metrics[name]) for run in report.runs]
        if base and tuned:
            row.append(_diff(tuned.scores.metrics[name] - base.scores.metrics[name]))
        rows.append(row)
    return rows


def _headers(report: EvalReport, first: str) -> list[str]:
    both = report.run(BASE) and report.run(FINE_TUNED)
    return [first] + [run.label for run in report.runs] + (["difference"] if both else [])


def _md_cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(headers: list[str], rows: list[list], numeric: bool = True) -> list[str]:
    """A markdown table; with `numeric`, every column after the first is right-aligned."""
    align = ["---"] + ["---:" if numeric else "---"] * (len(headers) - 1)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return lines


def _breakdown_rows(report: EvalReport, table: dict) -> list[list[str]]:
    both = report.run(BASE) and report.run(FINE_TUNED)
    rows = []
    for row in table["rows"]:
        cells = [row["group"], str(row["count"])] + [_pct(row[run.label]) for run in report.runs]
        if both:
            cells.append(_diff(row[FINE_TUNED] - row[BASE]))
        rows.append(cells)
    return rows


def _title(report: EvalReport) -> str:
    return f"mmlora evaluation: {report.task} on {report.split} ({len(report.items)} samples)"


def _sources(report: EvalReport) -> list[str]:
    lines = [f"data: {report.data_file}"]
    lines += [f"{run.label}: {run.model}" for run in report.runs]
    return lines


def write_markdown(report: EvalReport, path: Path, max_examples: int = 20) -> None:
    """report.md: metric table (models side by side + difference), breakdowns, examples."""
    lines = [f"# {_title(report)}", ""] + [f"- {s}" for s in _sources(report)] + ["", "## Metrics", ""]
    lines += _md_table(_headers(report, "metric"), metric_rows(report)) + ["", SCALE_NOTE, ""]
    metric = metric_label(report, report.primary)
    for table in breakdowns(report):
        lines += [f"## {metric} by {table['by']}", ""]
        headers = [table["by"], "samples"] + _headers(report, "")[1:]
        lines += _md_table(headers, _breakdown_rows(report, table)) + [""]
    last, base = report.runs[-1], report.run(BASE)
    if base is not None and base is not last:
        picked = [k for k in range(len(report.items)) if base.predictions[k] != last.predictions[k]]
        # Largest score changes first: the examples that explain the difference in the table.
        picked.sort(key=lambda k: -abs(last.scores.per_sample[k] - base.scores.per_sample[k]))
        heading = f"## Where the two models differ ({len(picked)} of {len(report.items)} samples"
        columns = ["question", "references", BASE, FINE_TUNED]
    else:
        picked = [k for k in range(len(report.items)) if not last.scores.correct[k]]
        wrong = "Wrong answers" if report.task == "vqa" else "Captions that match no reference"
        heading = f"## {wrong} ({len(picked)} of {len(report.items)} samples"
        columns = ["question", "references", last.label]
    shown = picked[:max_examples]
    lines += [heading + (f", first {len(shown)})" if len(shown) < len(picked) else ")"), ""]
    if shown:
        rows = []
        for k in shown:
            item = report.items[k]
            answers = [f"{run.predictions[k]} ({_pct(run.scores.per_sample[k])})"
                       for run in ([base, last] if len(columns) == 4 else [last])]
            rows.append([Path(item.image).name, item.question, format_references(item.references), *answers])
        lines += _md_table(["image"] + columns, rows, numeric=False) + [""]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# report.html


def thumbnail_uri(image, size: int = THUMBNAIL_PX) -> str | None:
    """A small JPEG of an image (path, bytes, PIL image) as a data: URI; None if unreadable."""
    from mmlora.data.images import load_image
    from mmlora.errors import MmloraError

    try:
        picture = load_image(image, where="report thumbnail")
    except (MmloraError, OSError, ValueError):
        return None
    picture.thumbnail((size, size))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _html_table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _card(report: EvalReport, k: int, thumbnails: dict[str, str | None]) -> str:
    item, last, base = report.items[k], report.runs[-1], report.run(BASE)
    # VQA asks several questions per image: encode each image file once.
    key = item.image if isinstance(item.image_ref, (str, Path)) else f"#{k}"
    if key not in thumbnails:
        thumbnails[key] = thumbnail_uri(item.image_ref) if item.image_ref is not None else None
    uri = thumbnails[key]
    picture = (f'<img class="thumb" src="{uri}" alt="{html.escape(Path(item.image).name)}">' if uri
               else '<div class="thumb missing">image unavailable</div>')
    answers, metric = [], metric_label(report, report.primary)
    for run in report.runs:
        verdict = "ok" if run.scores.correct[k] else "wrong"
        answers.append(
            f'<div class="answer {verdict}"><span class="who">{html.escape(run.label)}</span>'
            f'<span class="text">{html.escape(run.predictions[k]) or "<em>(empty)</em>"}</span>'
            f'<span class="score" title="{metric} x100">{_pct(run.scores.per_sample[k])}</span></div>'
        )
    differ = base is not None and base is not last and base.predictions[k] != last.predictions[k]
    return (
        f'<article class="card" data-correct="{int(last.scores.correct[k])}" data-differ="{int(differ)}">'
        f"{picture}<div class=\"q\">{html.escape(item.question)}</div>"
        f'<div class="refs">references: {html.escape(format_references(item.references))}</div>'
        + "".join(answers) + "</article>"
    )


STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#1e1e1e;background:#f6f6f4}
h1{font-size:22px}h2{font-size:17px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0;background:#fff}
th,td{border:1px solid #ddd;padding:4px 10px;text-align:right}th:first-child,td:first-child{text-align:left}
.note,.sources{color:#555;font-size:13px;max-width:900px}
.bar{margin:16px 0;font-size:15px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:14px}
.card{background:#fff;border:1px solid #ddd;border-radius:8px;padding:10px;display:flex;flex-direction:column;gap:6px}
.card[hidden]{display:none}
.thumb{display:block;margin:0 auto;max-width:100%;max-height:192px;border-radius:4px}
.missing{color:#888;font-size:13px;text-align:center;padding:60px 0;border:1px dashed #ccc}
.q{font-weight:600}.refs{font-size:13px;color:#555}
.answer{display:flex;gap:8px;align-items:baseline;padding:4px 6px;border-radius:4px;border-left:4px solid}
.answer.ok{background:#e8f3ea;border-color:#1b7f3b}
.answer.wrong{background:#fbe3e6;border-color:#b00020}
.who{font-size:12px;color:#555;min-width:70px}.text{flex:1}.score{font-size:12px;color:#555}
.loss{max-width:min(100%,640px);border:1px solid #ddd}
"""

SCRIPT = """
const filter = document.getElementById('filter');
function apply() {
  const f = filter.value;
  for (const card of document.querySelectorAll('.card')) {
    card.hidden = !(f === 'all' || (f === 'correct' && card.dataset.correct === '1')
      || (f === 'incorrect' && card.dataset.correct === '0') || (f === 'differ' && card.dataset.differ === '1'));
  }
}
filter.addEventListener('change', apply);
const wanted = location.hash.slice(1);  // report.html#incorrect opens filtered
if ([...filter.options].some(o => o.value === wanted)) { filter.value = wanted; }
apply();
"""


def write_html(report: EvalReport, path: Path, max_cards: int = 500, loss_png: Path | None = None) -> None:
    """report.html: metric tables, the loss curve if given, and one filterable card per sample."""
    last, base = report.runs[-1], report.run(BASE)
    n = min(len(report.items), max_cards)
    correct = sum(last.scores.correct[:n])
    options = [("all", f"all samples ({n})"), ("correct", f"{last.label} correct ({correct})"),
               ("incorrect", f"{last.label} wrong ({n - correct})")]
    if base is not None and base is not last:
        differ = sum(base.predictions[k] != last.predictions[k] for k in range(n))
        options.append(("differ", f"answers differ ({differ})"))
    parts = [f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(_title(report))}</title>",
             f"<style>{STYLE}</style></head><body><h1>{html.escape(_title(report))}</h1>",
             '<div class="sources">' + "<br>".join(html.escape(s) for s in _sources(report)) + "</div>",
             "<h2>Metrics</h2>", _html_table(_headers(report, "metric"), metric_rows(report)),
             f'<p class="note">{html.escape(SCALE_NOTE)}</p>']
    for table in breakdowns(report):
        parts.append(f"<h2>{html.escape(metric_label(report, report.primary))} by {html.escape(table['by'])}</h2>")
        parts.append(_html_table([table["by"], "samples"] + _headers(report, "")[1:], _breakdown_rows(report, table)))
    if loss_png is not None:
        data = base64.b64encode(Path(loss_png).read_bytes()).decode("ascii")
        parts.append(f'<h2>Training loss</h2><img class="loss" src="data:image/png;base64,{data}" alt="loss curve">')
    parts.append("<h2>Samples</h2>")
    if n < len(report.items):
        parts.append(f'<p class="note">Showing the first {n} of {len(report.items)} samples '
                     "(eval.report_max_cards); predictions.jsonl has them all.</p>")
    select = "".join(f'<option value="{v}">{html.escape(label)}</option>' for v, label in options)
    parts.append(f'<div class="bar"><label>show <select id="filter">{select}</select></label></div>')
    thumbnails: dict[str, str | None] = {}
    parts.append('<div class="cards">' + "".join(_card(report, k, thumbnails) for k in range(n)) + "</div>")
    parts.append(f"<script>{SCRIPT}</script></body></html>")
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
