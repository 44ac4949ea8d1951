"""report.md, report.html (opened in headless Chromium) and loss.png, from known predictions.

No model here: the reports are built from the demo's eval rows with chosen answers, so what each
card must show (image, verdict) is known in advance.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import math
import os
import re
import shutil
import subprocess

import pytest
from PIL import Image

from mmlora.config.loading import load_recipe
from mmlora.data.loading import load_samples
from mmlora.data.synthetic import COLORS
from mmlora.evaluation.metrics import score_task
from mmlora.evaluation.plot import EVAL_COLOR, TRAIN_COLOR, nice_ticks, write_loss_plot
from mmlora.evaluation.report import write_html, write_markdown
from mmlora.evaluation.results import BASE, EvalReport, FINE_TUNED, ModelRun, eval_items, metrics_summary

CORRECT_COLORS, WRONG_COLORS = ("red", "blue"), ("yellow", "purple")
"""Shape colours of the cards the fine-tuned model answers right / wrong (green is left out:
it is too close to the page's own green)."""


def shape_color_of(item) -> str:
    return os.path.basename(item.image).split("_")[0]


@pytest.fixture(scope="module")
def report():
    """Eight "What color is the shape?" samples, two per colour; base wrong everywhere, the
    fine-tuned model right on the red and blue shapes and wrong on yellow and purple."""
    recipe = load_recipe("tiny_vqa")
    samples = [s for s in load_samples(recipe.data.eval, recipe.data, recipe.task)
               if "shape" in s.messages[-2]["content"][-1]["text"]]
    picked = []
    for color in CORRECT_COLORS + WRONG_COLORS:
        picked += [s for s in samples if os.path.basename(str(s.images[0])).startswith(color)][:2]
    assert len(picked) == 8
    items = eval_items(picked)
    references = [i.references for i in items]
    base = ["square"] * 8
    tuned = [i.references[0] if shape_color_of(i) in CORRECT_COLORS else "gray" for i in items]
    runs = [ModelRun(BASE, "tiny/qwen2-vl", base, score_task("vqa", base, references)),
            ModelRun(FINE_TUNED, "runs/x", tuned, score_task("vqa", tuned, references))]
    return EvalReport("vqa", "eval", recipe.data.eval, items, runs, "runs/x")


def test_markdown_report_tables(report, tmp_path):
    path = tmp_path / "report.md"
    write_markdown(report, path, max_examples=3)
    text = path.read_text()
    assert "| VQA accuracy (always) | 0.0 | 50.0 | +50.0 |" in text
    assert "| exact match | 0.0 | 50.0 | +50.0 |" in text
    # The demo rows carry question_type; all eight are "shape color" (one group: no breakdown
    # by it), so the report falls back to the question text, also a single group -> none.
    assert "by question" not in text
    assert "## Where the two models differ (8 of 8 samples, first 3)" in text
    examples = [line for line in text.splitlines() if line.startswith("| ") and ".png" in line]
    assert len(examples) == 3
    assert all("(100.0)" in line for line in examples)  # the largest score changes come first


def test_breakdown_by_question_type(tmp_path):
    recipe = load_recipe("tiny_vqa")
    samples = load_samples(recipe.data.eval, recipe.data, recipe.task)[:10]
    items = eval_items(samples)
    assert {i.groups["question_type"] for i in items} == {"shape color", "background color"}
    answers = [i.references[0] if i.groups["question_type"] == "background color" else "x" for i in items]
    run = ModelRun(FINE_TUNED, "m", answers, score_task("vqa", answers, [i.references for i in items]))
    summary = metrics_summary(EvalReport("vqa", "eval", recipe.data.eval, items, [run]))
    (table,) = summary["breakdowns"]
    assert table["by"] == "question_type"
    rows = {row["group"]: row for row in table["rows"]}
    assert rows["background color"][FINE_TUNED] == 1.0 and rows["shape color"][FINE_TUNED] == 0.0
    assert rows["background color"]["count"] + rows["shape color"]["count"] == 10


def _card_images(html_text: str) -> list[Image.Image]:
    uris = re.findall(r'<img class="thumb" src="data:image/jpeg;base64,([^"]+)"', html_text)
    return [Image.open(io.BytesIO(base64.b64decode(u))) for u in uris]


def test_html_is_self_contained(report, tmp_path):
    loss_png = write_loss_plot([{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0}], tmp_path / "loss.png")
    path = tmp_path / "report.html"
    write_html(report, path, loss_png=loss_png)
    text = path.read_text()
    assert "http://" not in text and "https://" not in text and "<link" not in text and "url(" not in text
    sources = re.findall(r'src="([^"]*)"', text)
    assert sources and all(s.startswith("data:") for s in sources)
    assert text.count('<article class="card"') == 8
    images = _card_images(text)
    assert len(images) == 8 and all(max(im.size) <= 192 for im in images)
    assert text.count('data-correct="1"') == 4 and text.count('data-differ="1"') == 8
    assert text.count('class="answer wrong"') == 8 + 4  # base everywhere, fine-tuned on 4


# ------------------------------------------------------------------ headless Chromium


@pytest.fixture(scope="module")
def chromium():
    """Debian's chromium (installed by `make browser`, which .ci/run calls before the tests)."""
    path = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    if path is None:
        message = "headless Chromium not found: run `make browser` (installs Debian's chromium package)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{message}; CI must run the screenshot test")
        pytest.skip(message)
    return path


def screenshot(chromium: str, page, out, fragment: str = "") -> Image.Image:
    profile = out.parent / f"profile-{out.stem}"
    profile.mkdir()
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--hide-scrollbars", "--window-size=1280,2000",
               f"--screenshot={out}", page.as_uri() + fragment]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert out.is_file(), f"no screenshot: {result.stderr[-2000:]}"
    return Image.open(out).convert("RGB")


def color_pixels(image: Image.Image, rgb: tuple[int, int, int], tolerance: int = 24) -> int:
    """Pixels within `tolerance` of `rgb` on every channel."""
    bands = [band.point(lambda v, c=c: 255 if abs(v - c) <= tolerance else 0) for band, c in zip(image.split(), rgb)]
    mask = Image.eval(bands[0], lambda v: v)
    for band in bands[1:]:
        mask = Image.composite(band, Image.new("L", band.size, 0), mask)
    return mask.histogram()[255]


def test_cards_render_with_their_images_and_filter(report, tmp_path, chromium):
    page = tmp_path / "report.html"
    write_html(report, page)
    shown = screenshot(chromium, page, tmp_path / "all.png")
    counts = {c: color_pixels(shown, COLORS[c]) for c in CORRECT_COLORS + WRONG_COLORS}
    # Each colour fills most of two ~100x100 thumbnails: thousands of pixels.
    assert all(n > 2000 for n in counts.values()), counts

    # Control: the same page without images has none of these colours.
    blank = EvalReport(report.task, report.split, report.data_file,
                       [dataclasses.replace(i, image_ref=None) for i in report.items], report.runs)
    page_blank = tmp_path / "blank.html"
    write_html(blank, page_blank)
    empty = screenshot(chromium, page_blank, tmp_path / "blank.png")
    assert all(color_pixels(empty, COLORS[c]) < 50 for c in counts), "colours come from the page itself"

    # The filter (opened as report.html#correct / #incorrect) hides the other cards.
    right = screenshot(chromium, page, tmp_path / "correct.png", "#correct")
    wrong = screenshot(chromium, page, tmp_path / "incorrect.png", "#incorrect")
    for color in CORRECT_COLORS:
        assert color_pixels(right, COLORS[color]) > 2000 and color_pixels(wrong, COLORS[color]) < 50
    for color in WRONG_COLORS:
        assert color_pixels(wrong, COLORS[color]) > 2000 and color_pixels(right, COLORS[color]) < 50


# ---------------------------------------------------------------------------- loss.png


def test_loss_plot_draws_both_curves(tmp_path):
    history = [{"step": s, "loss": 5 * math.exp(-s / 40), "learning_rate": 1e-3} for s in range(10, 210, 10)]
    history += [{"step": s, "eval_loss": 5 * math.exp(-s / 40) + 0.2} for s in (50, 100, 150, 200)]
    history.append({"step": 200, "train_runtime": 3.0})
    path = write_loss_plot(history, tmp_path / "loss.png")
    image = Image.open(path).convert("RGB")
    assert image.size == (800, 480)
    assert color_pixels(image, TRAIN_COLOR, 10) > 300  # the train line
    assert color_pixels(image, EVAL_COLOR, 10) > 4 * 30  # four eval markers and their line
    only_train = Image.open(write_loss_plot(history[:20], tmp_path / "train.png")).convert("RGB")
    assert color_pixels(only_train, EVAL_COLOR, 10) == 0
    assert write_loss_plot([{"step": 1, "learning_rate": 1.0}], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


@pytest.mark.parametrize(("low", "high"), [(0.013, 6.2), (0, 216), (2.0, 2.0), (0.1, 0.35), (1e-4, 3e-4)])
def test_nice_ticks_cover_the_range_with_round_steps(low, high):
    ticks = nice_ticks(low, high)
    assert ticks[0] <= low and ticks[-1] >= high and 3 <= len(ticks) <= 12
    steps = {round(b - a, 12) for a, b in zip(ticks, ticks[1:])}
    assert len(steps) == 1
    mantissa = round(steps.pop() / 10 ** math.floor(math.log10(ticks[1] - ticks[0])), 6)
    assert mantissa in (1, 2, 2.5, 5)


def test_metrics_summary_difference(report):
    summary = metrics_summary(report)
    assert summary["models"][BASE]["vqa_accuracy"] == 0.0
    assert summary["models"][FINE_TUNED]["vqa_accuracy"] == 0.5
    assert summary["difference"]["vqa_accuracy"] == 0.5
    json.dumps(summary)  # serialisable as written to metrics.json
