"""What a model family is to mmlora: the `Family` description and the small pieces it is built of.

A family description answers, in one place: where the vision tower, the projector and the
language tower live in the loaded model; which token the chat template writes per image and
what the processor turns it into; which token closes a chat turn (the loss mask trains it);
which extra tensors the model's forward takes; which image-processor options bound the image
size; and how the offline tiny twin is built. The per-family modules (qwen, llava, idefics3,
gemma) hold the descriptions; nothing outside `mmlora.models.families` branches on a family's name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from mmlora.errors import MmloraError


class ImageTokens(int):
    """How many visual tokens one image becomes (an int), carrying the text its placeholder is
    replaced with.

    Most families repeat one token per visual token; Idefics3 writes row/column tags between
    tiles and Gemma 3 wraps the image in begin/end markers. Keeping the replacement next to the
    count lets every caller expand prompts through `expand_placeholders` alone.
    """

    text: str

    def __new__(cls, count: int, text: str) -> "ImageTokens":
        tokens = super().__new__(cls, count)
        tokens.text = text
        return tokens

    def __reduce__(self):  # picklable for DataLoader workers
        return ImageTokens, (int(self), self.text)


def repeated(token: str, count: int) -> ImageTokens:
    """The placeholder replaced by `count` copies of `token` (Qwen, LLaVA, PaliGemma)."""
    return ImageTokens(count, token * count)


def tiny_text_config(model_type: str, vocab_size: int, bos: int, eos: int, pad: int,
                     num_key_value_heads: int = 2, **extra) -> dict:
    """The tiny twins' decoder: 2 layers, hidden 64, 4 heads; `extra` adds family fields."""
    return {
        "model_type": model_type,
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": num_key_value_heads,
        "max_position_embeddings": 4096,
        # 0.25 rather than the usual 0.02: with the default, the frozen lm_head and final norm
        # keep logits near +-1 and the loss cannot fall below ~4.5 whatever LoRA learns.
        "initializer_range": 0.25,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
        **extra,
    }


def tiny_vision_config(model_type: str, **extra) -> dict:
    """The tiny twins' vision tower: 2 layers, hidden 32, 56-px images in 14-px patches (16
    patches); `extra` adds family fields."""
    return {"model_type": model_type, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "image_size": 56, "patch_size": 14, **extra}


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: its dict fields are not hashable
class TinySpec:
    """How a family's offline tiny twin is built: random weights from a small config plus a real
    processor (byte-level BPE tokenizer with the family's special tokens, its chat template, its
    image processor with small images)."""

    model_id: str
    """Built-in id, e.g. `tiny/qwen2-vl`; files ship in assets/tiny-<name>/."""
    special_tokens: tuple[str, ...]
    tokenizer_roles: dict
    """bos_token / eos_token / pad_token / unk_token (None where the family has none)."""
    chat_template: str
    config: Callable[[Callable[[str], int], int], dict]
    """(token id lookup, vocabulary size) -> config.json contents."""
    preprocessor_config: dict
    """preprocessor_config.json contents: the keys, in the order, the family's published
    checkpoint has them (e.g. Qwen2-VL's top-level min/max_pixels), with the twin's small sizes."""
    tokenizer_class: str = "TokenizersBackend"
    named_tokens: dict = field(default_factory=dict)
    """Extra named special tokens (tokenizer attributes such as Gemma 3's boi_token)."""
    processor_config: dict | None = None
    """processor_config.json contents, where the published checkpoint has that file."""
    video_preprocessor_config: dict | None = None
    """video_preprocessor_config.json contents, where the published checkpoint has that file."""


def no_text_inputs(input_ids, attention_mask, labels, visual_token_id) -> dict:
    """Families whose forward needs nothing beyond input_ids and attention_mask."""
    return {}


def mm_token_types(input_ids, attention_mask, labels, visual_token_id) -> dict:
    """Qwen-VL: the modality of every token (1 = image), which places the 3-D mRoPE positions."""
    return {"mm_token_type_ids": (input_ids == visual_token_id).long() * attention_mask}


def fixed_resolution(image_processor, min_pixels: int, max_pixels: int) -> dict:
    """Families that resize every image to one size: min/max_pixels do not apply."""
    return {}


def pixel_bounds(image_processor, min_pixels: int, max_pixels: int) -> dict:
    """Qwen-VL: the image keeps its aspect ratio and its area is clamped to [min, max] pixels.

    Both spellings are given: published Qwen2/2.5-VL files carry top-level `min_pixels` /
    `max_pixels`, which the image processor applies over `size` when it is built, so a `size`
    alone would lose to the checkpoint's bounds (12845056 px: 16k visual tokens for a photo).
    Below one visual token's area the processor would silently round the image *up* to it (a
    bound that does not bound): refused, with the smallest value that works.
    """
    side = int(getattr(image_processor, "patch_size", 1)) * int(getattr(image_processor, "merge_size", 1))
    if max_pixels < side * side:
        raise MmloraError(f"max_pixels={max_pixels} (model.max_pixels / --max-pixels) is below one visual "
                          f"token of this model ({side}x{side} = {side * side} pixels): use at least {side * side}.")
    return {"size": {"shortest_edge": min_pixels, "longest_edge": max_pixels},
            "min_pixels": min_pixels, "max_pixels": max_pixels}


def tile_bounds(image_processor, min_pixels: int, max_pixels: int) -> dict:
    """Idefics3/SmolVLM: the longest edge becomes sqrt(max_pixels) rounded down to whole tiles
    (at least one); the image is then cut into tiles plus one downscaled global view."""
    tile = image_processor.max_image_size["longest_edge"]
    return {"size": {"longest_edge": max(1, math.isqrt(max_pixels) // tile) * tile}}


@dataclass(frozen=True)
class Family:
    """One model family: paths, tokens, inputs and image-size rules (see module docstring)."""

    name: str
    model_types: tuple[str, ...]
    """`config.model_type` values that belong to this family."""
    vision_tower: str
    """Module path of the vision encoder, relative to the *ForConditionalGeneration model."""
    projector: tuple[str, ...]
    """Module paths of the vision-language projector (a ModuleList stands for each entry)."""
    language_model: str
    """Module path of the decoder stack (lm_head and embeddings sit outside it)."""
    image_token: str
    """Placeholder the chat template writes once per image; the processor expands it."""
    turn_end: str
    """Token that closes every chat turn; trained as part of each assistant answer."""
    image_tokens: Callable[[Any, Any, dict, int], ImageTokens]
    """(image processor, model config, image-processor output, k) -> expansion of image k."""
    vision_inputs: tuple[str, ...] = ("pixel_values",)
    """Image-processor outputs the model's forward takes."""
    image_processor_kwargs: tuple[tuple[str, Any], ...] = ()
    """Extra (name, value) arguments of the image-processor call (Idefics3: row/col counts)."""
    text_inputs: Callable = no_text_inputs
    """(input_ids, attention_mask, labels or None, visual token id) -> extra forward inputs."""
    visual_token: str | None = None
    """The token standing for one visual feature, when it differs from `image_token`."""
    image_size_options: Callable[[Any, int, int], dict] = fixed_resolution
    """(image processor, min_pixels, max_pixels) -> image-processor options that bound the size."""
    chat_template: str | None = None
    """mmlora's chat template for this family, used instead of the checkpoint's (LLaVA's has no
    end-of-turn token to train; PaliGemma ships none)."""
    merge_size: int = 1
    """Patches merged per side into one visual token (2 for Qwen-VL's 2x2 merge)."""
    feature_layout: Any = None
    """How image features split per image (families/features.py) for the vision-feature cache;
    None where the cache refuses the family (`feature_cache_refusal` says why)."""
    feature_cache_refusal: str = ""
    tiny: TinySpec | None = None

    @property
    def feature_token(self) -> str:
        """The token repeated once per visual feature in the expanded prompt."""
        return self.visual_token or self.image_token


def find_module(model, path: str, family: Family):
    """The submodule at `path`, or an error saying the family's layout no longer matches."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise MmloraError(
            f"The model has no module '{path}', where the {family.name} family keeps a part. "
            "The installed transformers version may have renamed it; mmlora is tested with the "
            "versions in requirements.lock."
        ) from None


def projector_modules(model, family: Family) -> list[str]:
    """The projector's module names on the loaded model (ModuleLists expand to their entries)."""
    import torch

    names = []
    for path in family.projector:
        module = find_module(model, path, family)
        if isinstance(module, torch.nn.ModuleList):
            names += [f"{path}.{i}" for i in range(len(module))]
        else:
            names.append(path)
    return names
