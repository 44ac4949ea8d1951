"""The benchmark's pieces that run without a GPU: the Qwen2-VL-2B architecture it builds (its
published size), and the skewed synthetic data its tables describe."""

import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # bench/ is not installed

from bench.workloads import CPU, GPU_MIXED, QWEN2_VL_2B, write_data, write_model_dir  # noqa: E402


def test_gpu_workload_builds_qwen2_vl_2b_at_its_published_size(tmp_path):
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(write_model_dir(tmp_path, GPU_MIXED))
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    assert 2.15e9 < params < 2.25e9  # Qwen2-VL-2B-Instruct: 2.21B parameters
    assert len(model.model.language_model.layers) == QWEN2_VL_2B["text_config"]["num_hidden_layers"] == 28
    assert len(model.model.visual.blocks) == QWEN2_VL_2B["vision_config"]["depth"] == 32
    # special tokens point at the tiny tokenizer's ids, which the 2B vocabulary contains
    assert config.image_token_id < config.text_config.vocab_size


@pytest.mark.parametrize("workload", [CPU], ids=lambda w: w.name)
def test_synthetic_data_is_skewed_as_described(tmp_path, workload):
    path = write_data(tmp_path, workload)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == workload.samples
    large_sides = {max(size) for size in workload.large_sizes}
    large = sum(max(Image.open(tmp_path / r["image"]).size) in large_sides for r in rows) / len(rows)
    long = sum(len(r["answer"].split()) >= 40 for r in rows) / len(rows)
    assert abs(large - workload.large_share) < 0.1 and abs(long - workload.long_share) < 0.1
    assert write_data(tmp_path / "again", workload).read_text() == path.read_text()  # seeded
