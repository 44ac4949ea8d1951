"""The supported model families, one small description each (see `base.Family`).

Everything family-specific that the rest of mmlora needs is in these descriptions, so a
transformers rename (e.g. `model.language_model.*`) is fixed in one place and caught by the
tests (tests/models/test_families.py builds every family's tiny twin and resolves its paths).
"""

from __future__ import annotations

from mmlora.errors import MmloraError
from mmlora.models.families.base import Family, ImageTokens, TinySpec, find_module, projector_modules
from mmlora.models.families.gemma import GEMMA3, PALIGEMMA
from mmlora.models.families.idefics3 import IDEFICS3
from mmlora.models.families.llava import LLAVA, LLAVA_NEXT
from mmlora.models.families.qwen import QWEN2_5_VL, QWEN2_VL, QWEN3_VL

FAMILIES = (QWEN2_VL, QWEN2_5_VL, QWEN3_VL, LLAVA, LLAVA_NEXT, IDEFICS3, GEMMA3, PALIGEMMA)

__all__ = [
    "FAMILIES", "Family", "ImageTokens", "TinySpec", "find_module", "projector_modules",
    "family_for_model_type", "GEMMA3", "IDEFICS3", "LLAVA", "LLAVA_NEXT", "PALIGEMMA",
    "QWEN2_5_VL", "QWEN2_VL", "QWEN3_VL",
]


def family_for_model_type(model_type: str) -> Family:
    """The family of a config's `model_type`, or an error listing the supported ones."""
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    supported = "; ".join(f"{f.name} ({', '.join(f.model_types)})" for f in FAMILIES)
    raise MmloraError(
        f"Model type '{model_type}' is not supported yet. Supported families (model types): {supported}."
    )
