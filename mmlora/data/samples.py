"""The internal sample every data format becomes, and the errors a bad row raises.

A sample is one chat: `images` (in the order their placeholders appear) and `messages` in the
transformers chat style, every content a list of `{"type": "image"}` / `{"type": "text"}` parts.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from mmlora.errors import MmloraError

REASONS = {
    "malformed_json": "the line is not valid JSON",
    "not_utf8": "the line or field is not valid UTF-8 / Unicode text (undecodable bytes, a lone surrogate)",
    "malformed_csv": "a CSV/TSV row that does not parse cleanly (unbalanced quote, more cells than columns)",
    "corrupt_file": "a part of a data file is truncated or corrupt (e.g. a Parquet row group)",
    "bad_row": "the row does not match any supported format (see the message for the field)",
    "missing_answer": "no answer / caption / assistant turn",
    "empty_answer": "the answer or caption is empty",
    "missing_question": "a VQA row without a question",
    "image_mismatch": "the number of image placeholders differs from the number of images",
    "missing_image": "the image file does not exist",
    "image_not_a_file": "the image path is a folder, a pipe, a device or a symbolic-link loop, not a file",
    "image_outside_root": "the image path leaves the image root (data.allow_outside_root is false)",
    "url_not_allowed": "the image is a URL and data.allow_urls is false",
    "url_failed": "the image URL could not be fetched",
    "empty_image_file": "the image file is empty (0 bytes)",
    "not_an_image": "the file is not an image in a format Pillow reads",
    "corrupt_image": "the image is truncated or corrupt",
    "image_too_small": "the image is too small to carry anything (longer side under 8 px)",
    "image_too_large": "the image exceeds the decompression-bomb limit (Image.MAX_IMAGE_PIXELS)",
    "too_long": "the sample does not fit data.max_length without cutting an image or all answers",
}
"""Every reason a row can be refused or dropped, with what it means (used in reports)."""


FIELDS = ("image", "images", "caption", "captions", "question", "answer", "answers",
          "messages", "conversations", "system")
"""The column names mmlora reads; data.column_map renames other columns onto these."""


class RowError(MmloraError):
    """One row (or one of its images) cannot be used; `reason` is a key of REASONS."""

    def __init__(self, reason: str, message: str, where: str = ""):
        assert reason in REASONS, reason
        self.reason, self.detail, self.where = reason, message, where
        super().__init__(f"{where}: {message}" if where else message)

    def at(self, where: str) -> "RowError":
        """The same error, located at `where` (a file and row)."""
        return RowError(self.reason, self.detail, where)


@dataclass
class Sample:
    """One chat sample; images are references (paths, bytes, URLs, PIL images) until loaded."""

    images: list
    messages: list[dict]
    source: str
    """`file:line` or `file row N`, for error messages."""
    references: list[str] = field(default_factory=list)
    """All acceptable answers / captions, for evaluation."""
    answer_options: list[str] = field(default_factory=list)
    """Captions to draw the final answer from, one per epoch (data.captions_per_image=random)."""
    pixel_bounds: tuple[int | None, int | None] | None = None
    """(min_pixels, max_pixels) of the data source this sample came from (a mixture entry's own
    bounds; a None side, or None: model.min_pixels / max_pixels). Training, data check/preview and eval resize
    the sample's images within them (ImageTextProcessor.at_bounds)."""

    def row(self) -> dict:
        """The internal row `{"images": [...], "messages": [...]}`."""
        return {"images": list(self.images), "messages": self.messages}

    def with_final_answer(self, text: str) -> "Sample":
        """A copy whose last assistant turn says `text` (used to draw a random caption)."""
        messages = [dict(m) for m in self.messages]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        messages[last] = assistant_turn(text)
        return Sample(self.images, messages, self.source, self.references, pixel_bounds=self.pixel_bounds)


def text_part(text: str) -> dict:
    return {"type": "text", "text": text}


IMAGE_MARKER = "<image>"
"""Marks where an image goes in user text, in every row format, family and `mmlora infer --prompt`."""


def marker_parts(text: str) -> list[dict]:
    """User text -> text and image parts, one image part per `<image>` marker.

    The text keeps its spacing around a marker in the middle (`What is <image> here?` ->
    `What is `, image, ` here?`); whitespace at the start and end of the whole text goes, as
    does whitespace that only separates markers (`<image>\nQ` -> image, `Q`), so the same
    content gives the same sample whichever way it is written.
    """
    pieces = text.split(IMAGE_MARKER)
    worded = [i for i, piece in enumerate(pieces) if piece.strip()]
    parts = []
    for i, piece in enumerate(pieces):
        if i > 0:
            parts.append({"type": "image"})
        if i not in worded:
            continue
        if i == worded[0]:
            piece = piece.lstrip()
        if i == worded[-1]:
            piece = piece.rstrip()
        parts.append(text_part(piece))
    return parts


def user_turn(text: str, n_images: int = 1, field: str = "question") -> dict:
    """A user message from text that may hold `<image>` markers (see `marker_parts`).

    Without markers the images go first, then the text (Qwen2-VL's and LLaVA's documented
    order); with markers there must be one per image, else a RowError names `field`.
    """
    if IMAGE_MARKER not in text:
        return {"role": "user", "content": [{"type": "image"}] * n_images + [text_part(text)]}
    parts = marker_parts(text)
    markers = sum(part["type"] == "image" for part in parts)
    if markers != n_images:
        raise RowError("image_mismatch", f"{field} has {markers} {IMAGE_MARKER} marker(s) but there "
                                         f"{'is' if n_images == 1 else 'are'} {n_images} image(s); "
                                         f"write one {IMAGE_MARKER} per image, or none to put the images first")
    return {"role": "user", "content": parts}


def assistant_turn(text: str) -> dict:
    return {"role": "assistant", "content": [text_part(text)]}


def system_turn(text: str) -> dict:
    return {"role": "system", "content": [text_part(text)]}


def text_of(content) -> str:
    """The text of a message content (a string, or the text parts joined by spaces)."""
    if isinstance(content, str):
        return content
    return " ".join(part["text"] for part in content if part.get("type") == "text")


def most_common_answer(answers: list[str]) -> str:
    """VQAv2 rows carry 10 human answers; train on the most frequent (first seen wins ties)."""
    if len(answers) <= 32:  # the same answer as the Counter's, without its set-up cost (the scan's hot path)
        return max(answers, key=answers.count)  # max keeps the first of equal counts
    return collections.Counter(answers).most_common(1)[0][0]
