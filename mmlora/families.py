"""One small description per model family: where its parts live and how its chat marks turns.

Everything family-specific that the rest of mmlora needs is here, so a transformers rename
(e.g. `model.language_model.*`) is fixed in one place and caught by the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from mmlora.errors import MmloraError


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    """`config.model_type` values that belong to this family."""
    vision_tower: str
    """Module path of the vision encoder (frozen), relative to the *ForConditionalGeneration model."""
    projector: str
    """Module path of the vision-language projector (inside the vision tower for Qwen2-VL)."""
    language_model: str
    """Module path of the decoder stack that gets LoRA."""
    image_token: str
    """Placeholder the processor expands into one token per visual token."""
    turn_end: str
    """Token that closes every chat turn; it is trained as part of each assistant answer."""
    merge_size: int = 2
    """Patches merged into one visual token per side (2x2 for Qwen2-VL: 28x28 px per token)."""
    patch_size: int = 14

    @property
    def pixels_per_visual_token(self) -> int:
        return (self.patch_size * self.merge_size) ** 2


QWEN2_VL = Family(
    name="qwen2_vl",
    model_types=("qwen2_vl",),
    vision_tower="model.visual",
    projector="model.visual.merger",
    language_model="model.language_model",
    image_token="<|image_pad|>",
    turn_end="<|im_end|>",
)

FAMILIES = (QWEN2_VL,)


def family_for_model_type(model_type: str) -> Family:
    """The family of a config's `model_type`, or an error listing the supported ones."""
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    supported = ", ".join(t for f in FAMILIES for t in f.model_types)
    raise MmloraError(
        f"Model type '{model_type}' is not supported yet. Supported model types: {supported}."
    )
