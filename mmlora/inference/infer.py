"""`mmlora infer`: one prompt about one image, with an optional LoRA adapter merged in."""

from __future__ import annotations

import sys
from pathlib import Path

from mmlora.data.images import load_image
from mmlora.data.samples import Sample, user_turn
from mmlora.errors import MmloraError
from mmlora.models.adapter_loading import load_with_adapter, model_config_for


def answer_one(model: str | None, adapter: str | None, image: str, prompt: str,
               max_new_tokens: int = 128, min_pixels: int | None = None,
               max_pixels: int | None = None) -> str:
    """Load the model (+ adapter, merged for zero added latency) and answer one prompt."""
    image_path = Path(image)
    if not image_path.is_file():
        raise MmloraError(f"Image '{image}' not found.")
    picture = load_image(image_path, where=str(image_path))  # fails fast, before loading weights
    # `<image>` in the prompt places the image (LLaVA writes `<image>\nQuestion`); else it goes first.
    sample = Sample([picture], [user_turn(prompt, 1, field="--prompt")], source=str(image_path))
    cfg = model_config_for(model, adapter, min_pixels, max_pixels)

    import torch

    from mmlora.evaluation.generate import generate_answers

    if not torch.cuda.is_available():
        print("mmlora: no CUDA device visible; running on CPU.", file=sys.stderr)
    net, loaded = load_with_adapter(cfg, adapter)
    return generate_answers(net, loaded.processor, [sample], 1, max_new_tokens, first_line=False)[0]
