"""`loss.png`: the training curve (train and eval loss against the step), drawn with PIL.

matplotlib is not a dependency of mmlora, and a loss curve needs little: axes with round-number
ticks, a light grid, one line per series and a legend.
"""

from __future__ import annotations

import math
from pathlib import Path

WIDTH, HEIGHT = 800, 480
LEFT, RIGHT, TOP, BOTTOM = 72, 24, 44, 56
"""Plot-area margins in pixels (room for tick labels, the title and the axis label)."""
BACKGROUND, AXIS, GRID, TEXT = (255, 255, 255), (60, 60, 60), (225, 225, 225), (30, 30, 30)
TRAIN_COLOR, EVAL_COLOR = (31, 119, 180), (230, 110, 0)
"""Blue and orange: distinct for most forms of colour blindness."""


def loss_series(history: list[dict]) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(step, loss) points of the training loss and of the eval loss in a Trainer log history."""
    def points(key: str) -> list[tuple[int, float]]:
        # NaN/inf losses (skipped steps) cannot be drawn; leave them out of the curve.
        return [(e["step"], float(e[key])) for e in history
                if key in e and "step" in e and math.isfinite(float(e[key]))]

    return points("loss"), points("eval_loss")


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round-numbered ticks (steps of 1, 2, 2.5 or 5 times a power of ten) covering [low, high]."""
    if high <= low:
        low, high = low - 0.5, high + 0.5
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * 0.999)
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    return [round(i * step, 12) for i in range(first, last + 1)]


def _label(value: float, ticks: list[float]) -> str:
    """`value` with as many decimals as the tick spacing needs (0.25 -> 2, 20 -> 0)."""
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    decimals = next((d for d in range(7) if abs(round(step, d) - step) < 1e-9 * max(1.0, step)), 6)
    return f"{value:.{decimals}f}"


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled scalable font (needs FreeType)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def draw_loss_plot(history: list[dict], title: str = "loss"):
    """The loss curve as a PIL image, or None when the history has no loss values."""
    from PIL import Image, ImageDraw

    train, evals = loss_series(history)
    points = train + evals
    if not points:
        return None
    x_ticks = nice_ticks(0, max(max(s for s, _ in points), 1))
    y_ticks = nice_ticks(min(v for _, v in points), max(v for _, v in points))
    x0, x1, y0, y1 = LEFT, WIDTH - RIGHT, HEIGHT - BOTTOM, TOP

    def to_px(step: float, value: float) -> tuple[float, float]:
        fx = (step - x_ticks[0]) / (x_ticks[-1] - x_ticks[0])
        fy = (value - y_ticks[0]) / (y_ticks[-1] - y_ticks[0])
        return x0 + fx * (x1 - x0), y0 + fy * (y1 - y0)

    image = Image.new("RGB", (WIDTH, HEIGHT), BACKGROUND)
    pen = ImageDraw.Draw(image)
    font, small = _font(16), _font(13)
    for tick in x_ticks:
        x, _ = to_px(tick, y_ticks[0])
        pen.line([(x, y0), (x, y1)], fill=GRID)
        pen.line([(x, y0), (x, y0 + 5)], fill=AXIS)
        pen.text((x, y0 + 8), _label(tick, x_ticks), fill=TEXT, font=small, anchor="mt")
    for tick in y_ticks:
        _, y = to_px(x_ticks[0], tick)
        pen.line([(x0, y), (x1, y)], fill=GRID)
        pen.line([(x0 - 5, y), (x0, y)], fill=AXIS)
        pen.text((x0 - 8, y), _label(tick, y_ticks), fill=TEXT, font=small, anchor="rm")
    pen.line([(x0, y1), (x0, y0), (x1, y0)], fill=AXIS, width=1)
    pen.text(((x0 + x1) / 2, HEIGHT - 16), "step", fill=TEXT, font=font, anchor="mm")
    pen.text((x0, TOP / 2), title, fill=TEXT, font=font, anchor="lm")

    legend = []
    for name, series, color in (("train loss", train, TRAIN_COLOR), ("eval loss", evals, EVAL_COLOR)):
        if not series:
            continue
        pixels = [to_px(s, v) for s, v in series]
        if len(pixels) > 1:
            pen.line(pixels, fill=color, width=2, joint="curve")
        if name == "eval loss" or len(pixels) == 1:  # eval points are sparse: mark each one
            for x, y in pixels:
                pen.ellipse([x - 4, y - 4, x + 4, y + 4], fill=color)
        legend.append((name, color))
    if legend:  # a boxed legend stays readable where a curve passes behind it
        pen.rectangle([x1 - 150, TOP + 2, x1 - 8, TOP + 26 + 22 * (len(legend) - 1)],
                      fill=BACKGROUND, outline=GRID)
    for i, (name, color) in enumerate(legend):
        y = TOP + 14 + 22 * i
        pen.line([(x1 - 140, y), (x1 - 110, y)], fill=color, width=3)
        pen.text((x1 - 102, y), name, fill=TEXT, font=small, anchor="lm")
    return image


def write_loss_plot(history: list[dict], path: str | Path, title: str = "loss") -> Path | None:
    """Draw the loss curve of a Trainer log history into `path` (PNG); None when there is no loss."""
    image = draw_loss_plot(history, title)
    if image is None:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
