"""Deterministic synthetic images (one coloured shape on a plain background) with captions and
VQA pairs: the offline demo's data and the tests' fixtures.

Why the questions are about colours only: the tiny model's vision tower is random and frozen.
Its features carry colour (a near-linear function of the pixels) but not shape: trained on
"What shape is it?" it stayed at chance (18-26% held out over 3 shapes, 20 epochs), while colour
questions pass 90%. Shapes still vary (and appear in captions) so images differ in layout.
Colours are far apart in RGB, and the shape spans most of the image, for the same reason.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (30, 60, 220),
    "yellow": (240, 210, 20),
    "purple": (140, 50, 180),
}
SHAPES = ("circle", "square", "triangle")
BACKGROUNDS = {"white": (250, 250, 250), "black": (15, 15, 15), "gray": (128, 128, 128)}
SIZES = ((112, 112), (140, 112), (112, 168))
"""Mixed resolutions and aspect ratios, so batches carry different visual-token counts."""

COLOR_QUESTION = "What color is the shape?"
SHAPE_QUESTION = "What shape is it?"
BACKGROUND_QUESTION = "What color is the background?"
QUESTION_TYPES = {COLOR_QUESTION: "shape color", SHAPE_QUESTION: "shape", BACKGROUND_QUESTION: "background color"}
"""Each VQA row's `question_type` (as VQAv2 rows carry one): `mmlora eval` reports per type."""


@dataclass(frozen=True)
class ShapeSpec:
    color: str
    shape: str
    background: str
    size: tuple[int, int]

    @property
    def caption(self) -> str:
        return f"a {self.color} {self.shape} on a {self.background} background"


def draw(spec: ShapeSpec) -> Image.Image:
    """Render one image: the shape centred, spanning 80% of the shorter side."""
    width, height = spec.size
    image = Image.new("RGB", spec.size, BACKGROUNDS[spec.background])
    pen = ImageDraw.Draw(image)
    half = int(min(width, height) * 0.4)
    cx, cy = width // 2, height // 2
    box = (cx - half, cy - half, cx + half, cy + half)
    fill = COLORS[spec.color]
    if spec.shape == "circle":
        pen.ellipse(box, fill=fill)
    elif spec.shape == "square":
        pen.rectangle(box, fill=fill)
    else:
        pen.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=fill)
    return image


def all_specs() -> list[ShapeSpec]:
    """Every combination of colour, shape, background and size."""
    return [
        ShapeSpec(color, shape, background, size)
        for color in COLORS
        for shape in SHAPES
        for background in BACKGROUNDS
        for size in SIZES
    ]


def vqa_pairs(spec: ShapeSpec) -> list[tuple[str, str]]:
    """The questions asked about one image, with their answers (colours: see module docstring)."""
    return [(COLOR_QUESTION, spec.color), (BACKGROUND_QUESTION, spec.background)]


def write_dataset(out_dir: Path, eval_share: float = 0.2, seed: int = 0) -> dict[str, int]:
    """Write images/ plus caption and VQA JSONL splits under `out_dir`; return row counts.

    Held-out images are distinct *combinations* of colour, shape, background and size, so the
    eval split measures generalisation rather than memorised images.
    """
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    specs = all_specs()
    random.Random(seed).shuffle(specs)
    n_eval = max(1, int(len(specs) * eval_share))
    splits = {"eval": specs[:n_eval], "train": specs[n_eval:]}
    counts = {}
    for split, split_specs in splits.items():
        caption_rows, vqa_rows = [], []
        for spec in split_specs:
            name = f"{spec.color}_{spec.shape}_{spec.background}_{spec.size[0]}x{spec.size[1]}.png"
            draw(spec).save(out_dir / "images" / name)
            image = f"images/{name}"
            caption_rows.append({"image": image, "caption": spec.caption})
            vqa_rows.extend({"image": image, "question": q, "answer": a, "question_type": QUESTION_TYPES[q]}
                            for q, a in vqa_pairs(spec))
        counts[f"caption_{split}"] = _write_jsonl(out_dir / f"caption_{split}.jsonl", caption_rows)
        counts[f"vqa_{split}"] = _write_jsonl(out_dir / f"vqa_{split}.jsonl", vqa_rows)
    return counts


def _write_jsonl(path: Path, rows: list[dict]) -> int:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return len(rows)


def vocabulary_text() -> str:
    """Every word the demo uses (for the tiny tokenizer's training corpus)."""
    words = [COLOR_QUESTION, SHAPE_QUESTION, BACKGROUND_QUESTION, "Describe the image."]
    words += [spec.caption for spec in all_specs()[:: len(SIZES)]]
    return "\n".join(words)


if __name__ == "__main__":
    import sys

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "assets/demo")
    print(write_dataset(target))
