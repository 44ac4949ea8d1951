"""Image-text processing that needs only an image processor, a tokenizer and a chat template.

Why not the family's `*Processor`: without torchvision, transformers 5.x cannot construct or
load Qwen2-VL's or SmolVLM's processor (their video processors need torchvision), while every
supported family's image processor has a PIL backend and the tokenizer needs neither. mmlora
therefore does the one thing the processor adds itself: replacing each image placeholder with
the tokens the image becomes, as the family description says (`Family.image_tokens`: counts
from image_grid_thw for Qwen-VL, fixed counts for LLaVA/Gemma 3/PaliGemma, row/column tiling
for Idefics3, anyres counts for LLaVA-NeXT). Tests compare the result with transformers' own
processors where those can be built here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from mmlora.config.sources import resolve_bounds
from mmlora.errors import MmloraError
from mmlora.models.families import Family
from mmlora.models.plaintext import PlainText, Tokenized

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
    """Visual tokens per image, in order (`ImageTokens`: ints that carry their expansion)."""
    vision_inputs: dict = field(default_factory=dict)
    """Every per-sample tensor the model's forward takes for the images (pixel_values, and
    image_grid_thw / image_sizes / pixel_attention_mask as the family needs)."""


def expand_placeholders(text: str, placeholder: str, counts: list[int]) -> str:
    """Replace the k-th placeholder with image k's tokens (only the placeholders `text` has).

    counts[k] is an `ImageTokens` (carrying its replacement text) or a plain int, which stands
    for that many copies of the placeholder. Expanding a prefix of a conversation gives a prefix
    of the expanded conversation, which is what lets the collator locate answer spans.
    """
    pieces = text.split(placeholder)
    if len(pieces) - 1 > len(counts):
        raise MmloraError(
            f"The rendered prompt has {len(pieces) - 1} image placeholder(s) {placeholder!r} but the "
            f"sample has {len(counts)} image(s); the chat template writes one placeholder per image part."
        )
    return pieces[0] + "".join(
        getattr(counts[k], "text", placeholder * counts[k]) + rest for k, rest in enumerate(pieces[1:])
    )


def _pad_to(tensor, shape: list[int]):
    out = tensor.new_zeros((tensor.shape[0], *shape))
    out[(slice(None), *(slice(0, s) for s in tensor.shape[1:]))] = tensor
    return out


def stack_vision(per_sample: list[dict]) -> dict:
    """Concatenate per-sample vision tensors along dim 0, zero-padding the other dims to the
    largest: tiles (Idefics3) and anyres patches (LLaVA-NeXT) vary per image, and both models
    skip all-zero padding."""
    import torch

    per_sample = [d for d in per_sample if d]
    if not per_sample:
        return {}
    out = {}
    for key in per_sample[0]:
        tensors = [d[key] for d in per_sample]
        shape = [max(t.shape[i] for t in tensors) for i in range(1, tensors[0].dim())]
        out[key] = torch.cat([t if list(t.shape[1:]) == shape else _pad_to(t, shape) for t in tensors])
    return out


def _as_parts(content):
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


@dataclass
class ImageTextProcessor:
    """Tokenizer + image processor + chat template for one model family."""

    tokenizer: Any
    image_processor: Any
    chat_template: str
    family: Family
    full_processor: Any = None
    """The family's own processor when it could be built (torchvision installed), else None;
    used only to write its config files next to mmlora's."""
    model_config: Any = None
    """The model's config: visual tokens per image depend on it (patch size, tokens per image)."""
    processor_config: dict | None = None
    """The checkpoint's processor_config.json, written back by save_pretrained."""
    record: dict | None = None
    """Base model, family and pixel bounds this processor was loaded with, written to
    mmlora.json by save_pretrained (set by modeling.load_model_and_processor)."""
    image_source: tuple[str, dict] | None = None
    """(source, hub kwargs) the image processor was read from: `at_bounds` reads it again."""
    pixel_bounds: tuple[int, int] | None = None
    """(min_pixels, max_pixels) the image processor was built with."""
    _bounded: dict = field(default_factory=dict, repr=False)

    def at_bounds(self, bounds: tuple[int | None, int | None] | None) -> "ImageTextProcessor":
        """This processor with images resized within `bounds` (a data source's own min/max_pixels;
        a None side keeps this processor's): the image processor is loaded again from its source
        with those bounds, exactly as `load_processor` loads it, once per distinct bounds."""
        if bounds is None:
            return self
        if self.pixel_bounds is None or self.image_source is None:
            raise MmloraError(f"A data source asks for min/max_pixels {bounds[0]}/{bounds[1]}, but this processor "
                              "was not loaded from model files (load_processor), so it cannot be rebuilt at them.")
        wanted = resolve_bounds(bounds, self.pixel_bounds)
        if wanted == self.pixel_bounds:
            return self
        if wanted not in self._bounded:
            source, hub_kwargs = self.image_source
            image_processor = load_image_processor(source, self.family, *wanted, **hub_kwargs)
            self._bounded[wanted] = dataclasses.replace(self, image_processor=image_processor, pixel_bounds=wanted,
                                                        _bounded={})
        return self._bounded[wanted]

    @property
    def image_token_id(self) -> int:
        """Id of the token that stands for one visual feature (never trained)."""
        return self.tokenizer.convert_tokens_to_ids(self.family.feature_token)

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    @cached_property
    def plain_text(self) -> PlainText:
        """Keeps special-token strings in message text plain text (mmlora.models.plaintext)."""
        return PlainText(self.tokenizer, self.family)

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        """The chat template applied to messages, as text with one placeholder per image.

        Special-token strings inside message text (`<|im_end|>`, `</s>`, a family's image
        token ...) come back as same-length sentinel runs (`PlainText.escape`), so they cannot
        pass for template structure; `tokenize` / `encode` turn them into plain-text tokens.
        String contents are passed as one text part: some families' templates (SmolVLM) read
        only list contents and would drop a plain-string system prompt.
        """
        from jinja2 import TemplateError

        escape = self.plain_text.escape
        messages = [{**m, "content": [{**part, "text": escape(part["text"])} if part.get("type") == "text" else part
                                      for part in _as_parts(m["content"])]} for m in messages]
        try:
            return self.tokenizer.apply_chat_template(
                messages,
                chat_template=self.chat_template,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
            )
        except TemplateError as err:
            raise MmloraError(f"The {self.family.name} chat template refused the conversation: {err}") from None

    def render_expanded(self, messages: list[dict], counts: list[int], add_generation_prompt: bool = False) -> str:
        """`render`'s text with image k's placeholder expanded to counts[k] tokens (expand_placeholders)."""
        return expand_placeholders(self.render(messages, add_generation_prompt), self.family.image_token, counts)

    def process_images(self, images: list) -> dict:
        """The image processor's output for `images`, resized within the recipe's bounds."""
        options = dict(self.family.image_processor_kwargs)
        return self.image_processor(images=images, return_tensors="pt", **options)

    def image_tokens(self, vision: dict, k: int):
        """What image k's placeholder becomes (`ImageTokens`)."""
        return self.family.image_tokens(self.image_processor, self.model_config, vision, k)

    def tokenize(self, text: str) -> Tokenized:
        """Token ids and offsets of rendered text (special-token strings from data as plain text)."""
        return self.plain_text.tokenize(text)

    def encode(self, text: str, images: list) -> Encoded:
        """Tokenise rendered text, replacing the k-th image placeholder with image k's tokens."""
        placeholder = self.family.image_token
        n_placeholders = text.count(placeholder)
        if n_placeholders != len(images):
            raise MmloraError(
                f"The prompt has {n_placeholders} image placeholder(s) but {len(images)} image(s) "
                "were given; each image needs exactly one image part in the messages."
            )
        counts, vision = [], {}
        if images:
            output = self.process_images(images)
            counts = [self.image_tokens(output, k) for k in range(len(images))]
            vision = {key: output[key] for key in self.family.vision_inputs if key in output}
            text = expand_placeholders(text, placeholder, counts)
        tokens = self.tokenize(text)
        input_ids = tokens.input_ids
        if input_ids.count(self.image_token_id) != sum(counts):
            raise MmloraError(
                f"The tokenizer does not keep {self.family.feature_token!r} as one token: the "
                f"prompt has {input_ids.count(self.image_token_id)} image tokens where the images "
                f"need {sum(counts)}. The tokenizer must list it as a special token."
            )
        return Encoded(
            input_ids=input_ids,
            offsets=tokens.offsets,
            text=tokens.text,
            pixel_values=vision.get("pixel_values"),
            image_grid_thw=vision.get("image_grid_thw"),
            image_token_counts=counts,
            vision_inputs=vision,
        )

    def text_inputs(self, input_ids, attention_mask, labels=None) -> dict:
        """Extra per-token model inputs of the family (mm_token_type_ids, token_type_ids).

        `labels` is None for generation prompts; PaliGemma marks trained tokens as its suffix.
        """
        return self.family.text_inputs(input_ids, attention_mask, labels, self.image_token_id)

    def decode(self, token_ids, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def save_pretrained(self, out_dir: str | Path) -> None:
        """Write the files a later `load_processor(out_dir)`, AutoProcessor, AutoImageProcessor
        or AutoTokenizer reads back as the trained preprocessing (mmlora/models/processor_files.py)."""
        from mmlora.models.processor_files import write_processor_files

        write_processor_files(self, out_dir)


def _read_template_file(source: str, local: Path | None, name: str, **hub_kwargs) -> str | None:
    if local is not None:
        path = local / name
        return path.read_text() if path.is_file() else None
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(source, name, **hub_kwargs)).read_text()
    except Exception:  # noqa: BLE001 - absent file (or no hub): try the next place
        return None


def _read_chat_template(source: str, tokenizer, **hub_kwargs) -> str:
    """The chat template from chat_template.jinja / .json, or the tokenizer's."""
    local = Path(source) if Path(source).is_dir() else None
    hub = {k: v for k, v in hub_kwargs.items() if k == "revision"}
    template = _read_template_file(source, local, "chat_template.jinja", **hub)
    if template is None:
        as_json = _read_template_file(source, local, "chat_template.json", **hub)
        template = json.loads(as_json)["chat_template"] if as_json else None
    template = template or getattr(tokenizer, "chat_template", None)
    if not template:
        raise MmloraError(
            f"No chat template found for '{source}': the model folder needs chat_template.jinja, "
            "chat_template.json or a tokenizer with a chat_template."
        )
    return template


def _read_processor_config(source: str) -> dict | None:
    path = Path(source) / "processor_config.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _try_full_processor(source: str, **kwargs):
    """The family's full processor, or None where it cannot be built (no torchvision, or one that
    does not import: mmlora/models/torchvision_check.py hides it)."""
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        return None
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(source, **kwargs)
    except Exception as err:  # noqa: BLE001 - any failure means: use the image-only path
        log.info("full processor unavailable for %s (%s); using image-only processing", source, err)
        return None


def _size_mismatches(image_processor, options: dict) -> list[str]:
    """`size` entries the built image processor does not have as the options asked."""
    wanted = options.get("size") or {}
    size = getattr(image_processor, "size", None)
    got = dict(size) if size is not None else {}
    return [f"size.{key}={got.get(key)} (asked {value})" for key, value in wanted.items() if got.get(key) != value]


def load_image_processor(source: str, family: Family, min_pixels: int, max_pixels: int, **hub_kwargs):
    """The image processor of `source` with the family's size options for [min, max] pixels.

    The recipe's bounds win over the checkpoint's, whichever way its preprocessor_config.json
    states them (top-level min/max_pixels, a `size` dict, a fast-processor dump): the options are
    passed as keyword arguments, which replace the file's keys before the processor is built,
    and the built processor is checked to hold them.
    """
    from transformers import AutoImageProcessor

    image_processor = AutoImageProcessor.from_pretrained(source, **hub_kwargs)
    options = family.image_size_options(image_processor, min_pixels, max_pixels)
    if options:
        image_processor = AutoImageProcessor.from_pretrained(source, **options, **hub_kwargs)
        mismatches = _size_mismatches(image_processor, options)
        if mismatches:
            raise MmloraError(
                f"The image processor of '{source}' ({type(image_processor).__name__}) did not take "
                f"the recipe's image bounds: {', '.join(mismatches)}. Its preprocessor_config.json "
                "has a layout mmlora does not know; please report it with that file."
            )
    return image_processor


def load_processor(
    source: str, family: Family, min_pixels: int, max_pixels: int, model_config=None, **hub_kwargs
) -> ImageTextProcessor:
    """Build the processor for `source` (hub id or local directory) with bounded image sizes."""
    from transformers import AutoConfig, AutoTokenizer

    model_config = model_config or AutoConfig.from_pretrained(source, **hub_kwargs)
    full = _try_full_processor(source, **hub_kwargs)
    tokenizer = full.tokenizer if full is not None else AutoTokenizer.from_pretrained(source, **hub_kwargs)
    image_processor = load_image_processor(source, family, min_pixels, max_pixels, **hub_kwargs)
    if full is not None:
        # The full processor was built with the checkpoint's bounds; it must resize as training does.
        full.image_processor = image_processor
    template = family.chat_template or _read_chat_template(source, tokenizer, **hub_kwargs)
    # Training pads on the right; batched generation switches to the left where it needs to.
    tokenizer.padding_side = "right"
    return ImageTextProcessor(
        tokenizer, image_processor, template, family, full_processor=full, model_config=model_config,
        processor_config=_read_processor_config(source), image_source=(source, hub_kwargs),
        pixel_bounds=(min_pixels, max_pixels),
    )
