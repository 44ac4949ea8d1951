"""How a family's image features split into one entry per image, and join back in batch order.

Every family's inner model computes visual features in `get_image_features(pixel_values, ...)`
(transformers 5.x) and its forward reads only `.pooler_output` of the result (Qwen3-VL also
`.deepstack_features`). The vision-feature cache (mmlora/models/vision_cache.py) needs, per
family: the inputs of one image (to hash it and to recompute it alone), the output rows of one
image, and how a batch's outputs are put back together. `FeatureLayout` answers those three;
families whose features are not laid out per image get `None` plus the reason.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable


@functools.cache
def _output_class():
    # Built on first use: importing transformers is not free, and families are read by every
    # command (plan, recipes) that never touches a model.
    from transformers.utils import ModelOutput

    @dataclass
    class CachedImageFeatures(ModelOutput):
        """What the cache returns in place of get_image_features' output: the two fields the
        families' forward reads (the tower's hidden states are not kept)."""

        pooler_output: Any = None
        deepstack_features: list | None = None

    return CachedImageFeatures


def cached_image_features(pooler_output, deepstack_features=None):
    """The object a family's forward reads features from (`.pooler_output`, `.deepstack_features`)."""
    return _output_class()(pooler_output=pooler_output, deepstack_features=deepstack_features)


@dataclass(frozen=True)
class FeatureLayout:
    """Per-image view of one get_image_features call (see module docstring)."""

    name: str
    inputs: tuple[str, ...]
    """Arguments of get_image_features that hold per-image data; the others are options."""
    split_inputs: Callable[[dict], list[dict]]
    """{input name: batch tensor} -> one {input name: tensor} per image, in batch order."""
    join_inputs: Callable[[list[dict]], dict]
    """Inverse of split_inputs for a subset of images (the ones to recompute)."""
    split_outputs: Callable[[object], list[dict]]
    """get_image_features' output -> one {name: feature tensor} per image."""
    join_outputs: Callable[[list[dict]], Any]
    """Per-image features -> the object the family's forward reads."""


def _cat(units: list[dict], name: str):
    import torch

    return torch.cat([unit[name] for unit in units], dim=0)


def _split_grid_inputs(inputs: dict) -> list[dict]:
    # Qwen-VL: pixel_values holds every image's patches one after another (t*h*w rows each).
    grid = inputs["image_grid_thw"]
    rows = grid.prod(-1).tolist()
    pixels = inputs["pixel_values"].split(rows)
    return [{"pixel_values": pixels[i], "image_grid_thw": grid[i:i + 1]} for i in range(len(rows))]


def _join_grid_inputs(units: list[dict]) -> dict:
    return {"pixel_values": _cat(units, "pixel_values"), "image_grid_thw": _cat(units, "image_grid_thw")}


def _split_grid_outputs(output) -> list[dict]:
    images = [{"pooler_output": features} for features in output.pooler_output]
    for level, per_image in enumerate(getattr(output, "deepstack_features", None) or []):
        for image, features in zip(images, per_image):
            image[f"deepstack_{level}"] = features  # Qwen3-VL: one merger output per DeepStack layer
    return images


def _join_grid_outputs(images: list[dict]) -> Any:
    levels = sorted(int(name.split("_")[1]) for name in images[0] if name.startswith("deepstack_"))
    deepstack = [tuple(image[f"deepstack_{level}"] for image in images) for level in levels]
    return cached_image_features(tuple(image["pooler_output"] for image in images), deepstack or None)


GRID = FeatureLayout("grid", ("pixel_values", "image_grid_thw"), _split_grid_inputs, _join_grid_inputs,
                     _split_grid_outputs, _join_grid_outputs)
"""Qwen2-VL, Qwen2.5-VL, Qwen3-VL: patches and features split by each image's t*h*w grid."""


def _split_batch_inputs(inputs: dict) -> list[dict]:
    pixels = inputs["pixel_values"]
    return [{"pixel_values": pixels[i:i + 1]} for i in range(pixels.shape[0])]


def _join_batch_inputs(units: list[dict]) -> dict:
    return {"pixel_values": _cat(units, "pixel_values")}


def _split_batch_outputs(output) -> list[dict]:
    return [{"pooler_output": features} for features in output.pooler_output]


def _join_listed(images: list[dict]) -> Any:
    return cached_image_features([image["pooler_output"] for image in images])


def _join_stacked(images: list[dict]) -> Any:
    import torch

    return cached_image_features(torch.stack([image["pooler_output"] for image in images]))


BATCH_LISTED = FeatureLayout("batch-listed", ("pixel_values",), _split_batch_inputs, _join_batch_inputs,
                             _split_batch_outputs, _join_listed)
"""LLaVA 1.5: one pixel_values row per image; features come back as a list, one per image."""

BATCH_STACKED = FeatureLayout("batch-stacked", ("pixel_values",), _split_batch_inputs, _join_batch_inputs,
                              _split_batch_outputs, _join_stacked)
"""Gemma 3, PaliGemma: one pixel_values row per image; features one (tokens, hidden) slab per image."""
