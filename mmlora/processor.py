"""Image-text processing that needs only an image processor, a tokenizer and a chat template.

Why not the family's `*Processor`: without torchvision, transformers 5.x cannot construct or
load Qwen2-VL's processor (its video processor needs torchvision), while the image processor
falls back to a PIL implementation and the tokenizer needs neither. mmlora therefore does the
one thing the processor adds itself: expanding each image placeholder into as many tokens as the
image yields visual tokens. Where torchvision exists the full processor is loaded and its parts
are used, so both paths produce identical inputs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmlora.errors import MmloraError
from mmlora.families import Family

log = logging.getLogger(__name__)


@dataclass
class Encoded:
    """One tokenised sample before batching."""

    input_ids: list[int]
    offsets: list[tuple[int, int]]
    """Character span of each token in `text` (the placeholder-expanded prompt)."""
    text: str
    pixel_values: Any = None
    image_grid_thw: Any = None
    image_token_counts: list[int] = field(default_factory=list)
    """Visual tokens per image, in order (what each placeholder was expanded to)."""


def expand_placeholders(text: str, placeholder: str, counts: list[int]) -> str:
    """Repeat the k-th placeholder counts[k] times (only the placeholders `text` contains).

    Expanding a prefix of a conversation gives a prefix of the expanded conversation, which is
    what lets the collator locate answer spans in expanded text.
    """
    pieces = text.split(placeholder)
    return pieces[0] + "".join(placeholder * counts[k] + rest for k, rest in enumerate(pieces[1:]))


@dataclass
class ImageTextProcessor:
    """Tokenizer + image processor + chat template for one model family."""

    tokenizer: Any
    image_processor: Any
    chat_template: str
    family: Family
    full_processor: Any = None
    """The family's own processor when it could be built (torchvision installed), else None."""

    @property
    def image_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.family.image_token)

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        """The chat template applied to messages, as text with one placeholder per image."""
        return self.tokenizer.apply_chat_template(
            messages,
            chat_template=self.chat_template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )

    def process_images(self, images: list) -> dict:
        """Pixel patches and (t, h, w) grids, resized within the processor's min/max pixels."""
        return self.image_processor(images=images, return_tensors="pt")

    def encode(self, text: str, images: list) -> Encoded:
        """Tokenise rendered text, expanding the k-th image placeholder to image k's token count."""
        placeholder = self.family.image_token
        n_placeholders = text.count(placeholder)
        if n_placeholders != len(images):
            raise MmloraError(
                f"The prompt has {n_placeholders} image placeholder(s) but {len(images)} image(s) "
                "were given; each image needs exactly one image part in the messages."
            )
        pixel_values = grid = None
        counts = []
        if images:
            vision = self.process_images(images)
            pixel_values, grid = vision["pixel_values"], vision["image_grid_thw"]
            counts = [int(g.prod()) // self.family.merge_size**2 for g in grid]
            text = expand_placeholders(text, placeholder, counts)
        tokens = self.tokenizer(
            text, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False
        )
        return Encoded(
            input_ids=list(tokens["input_ids"]),
            offsets=[tuple(span) for span in tokens["offset_mapping"]],
            text=text,
            pixel_values=pixel_values,
            image_grid_thw=grid,
            image_token_counts=counts,
        )

    def decode(self, token_ids, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def save_pretrained(self, out_dir: str | Path) -> None:
        """Write the files a later `load_processor(out_dir)` (or AutoProcessor) reads back."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if self.full_processor is not None:
            self.full_processor.save_pretrained(out_dir)
        self.tokenizer.save_pretrained(out_dir)
        self.image_processor.save_pretrained(out_dir)
        (out_dir / "chat_template.jinja").write_text(self.chat_template)


def _read_chat_template(source: Path | None, tokenizer) -> str:
    """The chat template from the tokenizer, or the processor's chat_template.jinja / .json."""
    if source is not None:
        jinja = source / "chat_template.jinja"
        if jinja.is_file():
            return jinja.read_text()
        as_json = source / "chat_template.json"
        if as_json.is_file():
            return json.loads(as_json.read_text())["chat_template"]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.chat_template
    raise MmloraError(
        f"No chat template found for '{source}': the model folder needs chat_template.jinja, "
        "chat_template.json or a tokenizer with a chat_template."
    )


def _try_full_processor(source: str, **kwargs):
    """The family's full processor, or None where it cannot be built (no torchvision)."""
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        return None
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(source, **kwargs)
    except Exception as err:  # noqa: BLE001 - any failure means: use the image-only path
        log.info("full processor unavailable for %s (%s); using image-only processing", source, err)
        return None


def load_processor(
    source: str, family: Family, min_pixels: int, max_pixels: int, **hub_kwargs
) -> ImageTextProcessor:
    """Build the processor for `source` (hub id or local directory) with bounded image sizes."""
    from transformers import AutoImageProcessor, AutoTokenizer

    size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    full = _try_full_processor(source, size=size, **hub_kwargs)
    if full is not None:
        tokenizer, image_processor = full.tokenizer, full.image_processor
    else:
        tokenizer = AutoTokenizer.from_pretrained(source, **hub_kwargs)
        image_processor = AutoImageProcessor.from_pretrained(source, size=size, **hub_kwargs)
    local = Path(source) if Path(source).is_dir() else None
    if local is None:
        template = getattr(full, "chat_template", None) or getattr(tokenizer, "chat_template", None)
        if not template:
            from huggingface_hub import hf_hub_download

            template = Path(hf_hub_download(source, "chat_template.json", **hub_kwargs))
            template = json.loads(template.read_text())["chat_template"]
    else:
        template = _read_chat_template(local, tokenizer)
    # Training pads on the right; batched generation switches to the left where it needs to.
    tokenizer.padding_side = "right"
    return ImageTextProcessor(tokenizer, image_processor, template, family, full_processor=full)
