import importlib.util

import torch
from PIL import Image

from mmlora.models.processor import ImageTextProcessor


def test_image_only_processor_without_torchvision(tiny, monkeypatch):
    """The processor builds and works with no torchvision (as on this machine)."""
    from mmlora.models import processor as processor_module
    from mmlora.models.families import QWEN2_VL

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torchvision" else real_find_spec(name, *a))
    proc = processor_module.load_processor(
        str(__import__("mmlora.models.tiny", fromlist=["x"]).tiny_dir("tiny/qwen2-vl")), QWEN2_VL, 56 * 56, 224 * 224
    )
    assert isinstance(proc, ImageTextProcessor) and proc.full_processor is None
    text = proc.render([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
                       add_generation_prompt=True)
    assert "<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    encoded = proc.encode(text, [Image.new("RGB", (112, 168), "red")])
    # 112 wide x 168 high -> a 12x8 (h x w) grid of 14-px patches -> 2x2 merged -> 24 visual tokens
    assert encoded.image_grid_thw.tolist() == [[1, 12, 8]]
    assert encoded.input_ids.count(proc.image_token_id) == 24 == encoded.image_token_counts[0]
    assert encoded.pixel_values.shape == (96, 3 * 2 * 14 * 14)


def test_image_only_processor_drives_the_model(tiny):
    from mmlora.data.collate import generation_batch
    from mmlora.data.samples import Sample, user_turn

    samples = [Sample([Image.new("RGB", (112, 112), "blue")], [user_turn("What color is the shape?")], "t")]
    batch = generation_batch(tiny.processor, samples)
    assert batch["mm_token_type_ids"].sum() == 16  # 112x112 -> 16 visual tokens, marked as images
    with torch.no_grad():
        logits = tiny.model(**batch).logits
    assert logits.shape[:2] == batch["input_ids"].shape and torch.isfinite(logits).all()


def test_max_pixels_bounds_visual_tokens(tiny):
    big = Image.new("RGB", (2000, 1500), "green")
    encoded = tiny.processor.encode(tiny.processor.render(
        [{"role": "user", "content": [{"type": "image"}]}]), [big])
    assert encoded.image_token_counts[0] * 28 * 28 <= 224 * 224
