"""The vision-cache workload's FLOP counts: the formulas against torch's FLOP counter, and the
scaled CPU model keeping Qwen2-VL-2B's vision-to-language ratio."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # bench/ is not installed

from bench.vision_cache import language_flops, published_ratio, scaled_config, vision_flops  # noqa: E402
from bench.workloads import QWEN2_VL_2B  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("config", [QWEN2_VL_2B, scaled_config(110, 8)], ids=["qwen2-vl-2b", "scaled"])
def test_vision_flops_equal_torch_flop_counter(config):
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoModelForImageTextToText, Qwen2VLConfig

    # One block at the real widths over a 224x224 image (16x16 patches): the formula is linear
    # in depth, and a whole 2B tower would be slow on CPU.
    one_block = {**config, "vision_config": {**config["vision_config"], "depth": 1},
                 "text_config": {**config["text_config"], "num_hidden_layers": 1, "vocab_size": 512}}
    model = AutoModelForImageTextToText.from_config(Qwen2VLConfig(**one_block), dtype=torch.float32)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.model.visual(torch.zeros(256, 3 * 2 * 14 * 14), grid_thw=torch.tensor([[1, 16, 16]]))
    # The counter does not see the vision attention (SDPA per image chunk on CPU): its
    # QK^T and AV matmuls, 2 x 2 x patches^2 x width, are added to what it counts.
    attention = 4 * 256 * 256 * config["vision_config"]["embed_dim"]
    assert vision_flops(one_block["vision_config"], 256) == pytest.approx(counter.get_total_flops() + attention, rel=1e-3)


def test_scaled_model_keeps_the_published_ratio():
    vision, language, ratio = published_ratio(False)
    assert vision == pytest.approx(1.48e12, rel=0.01)  # the "about 1.4 TFLOP per image"
    assert ratio == pytest.approx(0.90, abs=0.01)
    config = scaled_config(110, 8)
    scaled = vision_flops(config["vision_config"], 256) / language_flops(config["text_config"], 110, 8, 16, False)
    assert scaled == pytest.approx(ratio, rel=0.02)
    assert published_ratio(True)[2] < ratio  # checkpointing adds a language forward
