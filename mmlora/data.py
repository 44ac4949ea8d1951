"""Rows from data files -> chat samples `{"images": [...], "messages": [...]}`.

Row formats read here (JSON Lines, one row per line):
- captioning: `{"image": "a.png", "caption": "..."}`
- VQA:        `{"image": "a.png", "question": "...", "answer": "..."}` (or `answers: [...]`)
- messages:   `{"images": ["a.png"], "messages": [{"role": "user", "content": [...]}, ...]}`
"""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass, field
from pathlib import Path

from mmlora.config import DataConfig
from mmlora.errors import MmloraError
from mmlora.paths import resolve_data_path


@dataclass
class Sample:
    """One chat sample; images are paths until the dataset loads them."""

    images: list
    messages: list[dict]
    source: str
    """`file:line`, for error messages."""
    references: list[str] = field(default_factory=list)
    """All acceptable answers / captions, for evaluation."""


def user_turn(text: str, n_images: int = 1) -> dict:
    """A user message with the images first, then the text (Qwen2-VL's documented order)."""
    return {"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": text}]}


def assistant_turn(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def most_common_answer(answers: list[str]) -> str:
    """VQAv2 rows carry 10 human answers; train on the most frequent (first seen wins ties)."""
    return collections.Counter(answers).most_common(1)[0][0]


def _text_field(row: dict, name: str, where: str) -> str:
    value = row.get(name)
    if not isinstance(value, str) or not value.strip():
        raise MmloraError(f"{where}: field '{name}' must be a non-empty string, got {value!r}.")
    return value.strip()


def row_to_sample(row: dict, where: str, cfg: DataConfig, task: str) -> Sample:
    """Normalise one raw row into a Sample (image paths still unresolved)."""
    if not isinstance(row, dict):
        raise MmloraError(f"{where}: expected a JSON object, got {type(row).__name__}.")
    system = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
    if "messages" in row:
        images = row.get("images") or []
        if isinstance(images, str):
            images = [images]
        messages = row["messages"]
        if not isinstance(messages, list) or not any(m.get("role") == "assistant" for m in messages):
            raise MmloraError(f"{where}: field 'messages' needs at least one assistant turn.")
        last = messages[-1]
        answer = last["content"] if isinstance(last["content"], str) else " ".join(
            part.get("text", "") for part in last["content"] if part.get("type") == "text"
        )
        return Sample(list(images), system + messages, where, [answer])
    if "image" not in row:
        raise MmloraError(f"{where}: no 'image' field (and no 'messages').")
    image = row["image"]
    if "question" in row:
        question = _text_field(row, "question", where)
        if "answers" in row:
            answers = row["answers"]
            if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
                raise MmloraError(f"{where}: field 'answers' must be a non-empty list of strings.")
            answers = [a.strip() for a in answers]
            answer = most_common_answer(answers)
        else:
            answer = _text_field(row, "answer", where)
            answers = [answer]
        messages = system + [user_turn(question), assistant_turn(answer)]
        return Sample([image], messages, where, answers)
    captions = row.get("captions") or ([row["caption"]] if "caption" in row else None)
    if not captions:
        raise MmloraError(f"{where}: a captioning row needs 'caption' or 'captions' ('question' for VQA).")
    captions = [c.strip() for c in captions if isinstance(c, str) and c.strip()]
    if not captions:
        raise MmloraError(f"{where}: field 'caption' must be a non-empty string.")
    messages = system + [user_turn(cfg.caption_prompt), assistant_turn(captions[0])]
    return Sample([image], messages, where, captions)


def read_jsonl(path: Path) -> list[tuple[str, dict]]:
    """(`file:line`, row) for each non-empty line; a malformed line is an error naming it."""
    if not path.is_file():
        raise MmloraError(f"Data file '{path}' does not exist.")
    rows = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path}:{number}"
            if not raw.strip():
                continue
            try:
                rows.append((where, json.loads(raw.decode("utf-8"))))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise MmloraError(f"{where}: not a valid UTF-8 JSON line ({err}).") from None
    return rows


def load_samples(path: str, cfg: DataConfig, task: str) -> list[Sample]:
    """Every row of a JSONL file as a Sample with image paths resolved and checked to exist."""
    data_path = resolve_data_path(path)
    root = resolve_data_path(cfg.image_root) if cfg.image_root else data_path.parent
    samples = []
    for where, row in read_jsonl(data_path):
        sample = row_to_sample(row, where, cfg, task)
        sample.images = [_resolve_image(image, root, where) for image in sample.images]
        samples.append(sample)
    if not samples:
        raise MmloraError(f"Data file '{data_path}' has no rows.")
    return samples


def _resolve_image(image, root: Path, where: str):
    if not isinstance(image, str):
        return image  # already a PIL image
    path = (root / image).resolve()
    if not path.is_file():
        raise MmloraError(f"{where}: image '{image}' not found (looked at {path}).")
    return path


def load_image(image, where: str = "image"):
    """An RGB PIL image from a path or a PIL image, EXIF orientation applied."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(image, Image.Image):
        picture = image
    else:
        try:
            with Image.open(image) as opened:
                opened.load()
                picture = ImageOps.exif_transpose(opened)
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as err:
            raise MmloraError(f"{where}: cannot read image '{image}' ({err}).") from None
    if picture.mode == "RGBA" or (picture.mode == "P" and "transparency" in picture.info):
        # Composite transparency on white: a plain convert would turn transparent pixels black.
        rgba = picture.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        picture = Image.alpha_composite(background, rgba)
    return picture.convert("RGB")
