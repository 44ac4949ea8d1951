"""The scan benchmark's data: N rows over N/10 images, mixed row formats, a few bad rows.

Images are small PNGs of varied sizes (so visual-token counts differ); rows are flat VQA,
captions (some with several captions) and two-turn conversations, with questions and answers of
varied length, the rows of one image next to each other (as VQA sets list them), and 0.2% bad
rows (a missing image, an empty answer) so the scan's error path runs too. Deterministic by seed:
the rows and images depend on the seed and sizes only, not on which images a folder already holds.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

SIZES = ((56, 56), (112, 84), (140, 112), (168, 224), (224, 224), (336, 252), (280, 420), (448, 336))
WORDS = ("a the red green blue yellow purple white black gray circle square triangle shape on background "
         "is and of in small large left right top bottom picture image color").split()


def _image(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    image = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    width, height = size
    ImageDraw.Draw(image).ellipse((width // 4, height // 4, 3 * width // 4, 3 * height // 4),
                                  fill=tuple(rng.randrange(256) for _ in range(3)))
    return image


def _words(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def _row(rng: random.Random, image: str) -> dict:
    kind = rng.random()
    if kind < 0.6:
        return {"image": image, "question": _words(rng, 3, 12) + "?", "answer": _words(rng, 1, 3)}
    if kind < 0.9:
        captions = [_words(rng, 5, 25) for _ in range(rng.choice((1, 1, 1, 2)))]
        return {"image": image, "caption": captions[0]} if len(captions) == 1 else {"image": image, "captions": captions}
    return {"image": image, "messages": [
        {"role": "user", "content": "<image>\n" + _words(rng, 3, 10) + "?"},
        {"role": "assistant", "content": _words(rng, 1, 20)},
        {"role": "user", "content": _words(rng, 3, 10) + "?"},
        {"role": "assistant", "content": _words(rng, 1, 40)},
    ]}


def write_scan_data(folder: Path, rows: int, images: int | None = None, seed: int = 0) -> Path:
    """`folder/train.jsonl` (rows) over `folder/images/` (rows // 10 images); returns the file."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    names = []
    for i in range(images or max(1, rows // 10)):
        name = f"images/{i:06d}.png"
        # Drawn whether or not the file is there (a rerun keeps it: the same seed drew the same
        # image), so the rows drawn next are the same on a rerun over an existing folder.
        image = _image(rng, SIZES[i % len(SIZES)])
        if not (folder / name).exists():
            image.save(folder / name)
        names.append(name)
    lines = []
    for i in range(rows):
        row = _row(rng, names[i * len(names) // rows])  # an image's rows together, as in VQAv2's files
        if i % 500 == 7:  # 0.2% bad rows: half a missing image, half an empty answer
            row = {"image": "images/missing.png", "question": "q?", "answer": "a"} if i % 1000 == 7 else \
                {"image": row["image"], "question": "q?", "answer": ""}
        lines.append(json.dumps(row))
    path = folder / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path
