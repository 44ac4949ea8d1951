"""mmlora's training inputs against the real Qwen-VL processors, and the path mmlora takes where
torchvision exists.

The real `Qwen2VLProcessor` / `Qwen2_5_VLProcessor` / `Qwen3VLProcessor` need torchvision, which
must be importable before transformers is first imported; the rest of the suite runs without it.
So these tests run in their own pytest session with MMLORA_TEST_TORCHVISION=1 (conftest.py makes
torchvision importable through tests/torchvision_peer.py); `test_torchvision_session_passes`
starts that session from the ordinary one.
"""

from __future__ import annotations

import importlib.util
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests import torchvision_peer

IN_TORCHVISION_SESSION = os.environ.get("MMLORA_TEST_TORCHVISION") == "1"
needs_torchvision = pytest.mark.skipif(
    not IN_TORCHVISION_SESSION, reason="runs in the torchvision session test_torchvision_session_passes starts")

# (twin, family name, processor class, factor = patch x merge)
QWEN_TWINS = [("tiny/qwen2-vl", "qwen2_vl", "Qwen2VLProcessor", 28),
              ("tiny/qwen2.5-vl", "qwen2_5_vl", "Qwen2_5_VLProcessor", 28),
              ("tiny/qwen3-vl", "qwen3_vl", "Qwen3VLProcessor", 32)]


@pytest.mark.slow  # a second pytest session: ~20 s of tests plus its start
@pytest.mark.skipif(IN_TORCHVISION_SESSION, reason="this is the torchvision session")
def test_torchvision_session_passes():
    if not torchvision_peer.installed():
        pytest.skip("torchvision is not installed: `make test` installs it (requirements-test.txt)")
    env = {**os.environ, "MMLORA_TEST_TORCHVISION": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
         "-k", "not test_torchvision_session_passes"],
        cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary, summary  # every peer test ran


def random_cases(factor: int, seed: int, n: int = 6):
    """(bounds, image sizes) pairs: bounds from 1 to 8 tokens' worth of pixels up to 16x that,
    one to three images from 20 to 700 px a side (aspect ratios up to 35)."""
    rng = random.Random(seed)
    cases = []
    for _ in range(n):
        min_pixels = rng.randint(1, 8) * factor * factor
        max_pixels = min_pixels * rng.randint(1, 16) + rng.randint(0, factor * factor)
        sizes = [(rng.randint(20, 700), rng.randint(20, 700)) for _ in range(rng.randint(1, 3))]
        cases.append((min_pixels, max_pixels, sizes))
    return cases


def _messages(n_images: int) -> list[dict]:
    parts = [{"type": "image"}] * n_images + [{"type": "text", "text": "What is in the picture?"}]
    return [{"role": "user", "content": parts}, {"role": "assistant", "content": [{"type": "text", "text": "a dog"}]}]


def _images(sizes, rng):
    # Random pixels, not flat colours: resampling differences would not show on a flat image.
    return [Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3)) for size in sizes]


def assert_same_inputs(processor, peer, min_pixels: int, max_pixels: int, images):
    """mmlora's encode (+ mm_token_type_ids) equals the peer processor's output, token for token."""
    text = processor.render(_messages(len(images)))
    encoded = processor.encode(text, images)
    expected = peer(text=[text], images=images, return_tensors="pt", return_mm_token_type_ids=True,
                    size={"shortest_edge": min_pixels, "longest_edge": max_pixels})
    ids = torch.tensor([encoded.input_ids])
    assert encoded.input_ids == expected["input_ids"][0].tolist()
    assert torch.equal(encoded.image_grid_thw, expected["image_grid_thw"])
    assert torch.equal(encoded.pixel_values, expected["pixel_values"])
    mm_types = processor.text_inputs(ids, torch.ones_like(ids))["mm_token_type_ids"]
    assert torch.equal(mm_types, expected["mm_token_type_ids"])
    return encoded


def _load(twin: str, family_name: str, min_pixels: int, max_pixels: int):
    from mmlora.models.families import FAMILIES
    from mmlora.models.processor import load_processor
    from mmlora.models.tiny import tiny_dir

    family = next(f for f in FAMILIES if f.name == family_name)
    return load_processor(str(tiny_dir(twin)), family, min_pixels, max_pixels)


@needs_torchvision
@pytest.mark.parametrize("twin, family_name, processor_class, factor", QWEN_TWINS)
def test_training_inputs_equal_the_real_processor(twin, family_name, processor_class, factor):
    """Where torchvision exists mmlora builds the full processor (torchvision image backend) and
    its inputs equal the real processor's over random image sizes and bounds."""
    from transformers import AutoProcessor

    from mmlora.models.tiny import tiny_dir

    peer = AutoProcessor.from_pretrained(tiny_dir(twin))
    assert type(peer).__name__ == processor_class
    rng = random.Random(11)
    for min_pixels, max_pixels, sizes in random_cases(factor, seed=len(twin) * factor):
        processor = _load(twin, family_name, min_pixels, max_pixels)
        assert type(processor.full_processor).__name__ == processor_class
        assert_same_inputs(processor, peer, min_pixels, max_pixels, _images(sizes, rng))


@needs_torchvision
@pytest.mark.parametrize("twin, family_name, processor_class, factor", QWEN_TWINS)
def test_pil_path_equals_the_real_processor_with_the_pil_backend(twin, family_name, processor_class, factor,
                                                                 monkeypatch):
    """The path without torchvision (PIL image processor, no full processor) against the real
    processor class built around the PIL-backend image processor."""
    from transformers import AutoProcessor
    from transformers.models.auto import image_processing_auto
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from mmlora.models.tiny import tiny_dir

    full = AutoProcessor.from_pretrained(tiny_dir(twin))
    # What mmlora sees without torchvision: no module to find, and transformers picks PIL.
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torchvision" else real_find_spec(name, *a))
    monkeypatch.setattr(image_processing_auto, "is_torchvision_available", lambda: False)
    peer = type(full)(image_processor=Qwen2VLImageProcessorPil.from_pretrained(tiny_dir(twin)),
                      tokenizer=full.tokenizer, video_processor=full.video_processor,
                      chat_template=full.chat_template)
    rng = random.Random(12)
    for min_pixels, max_pixels, sizes in random_cases(factor, seed=1 + len(twin) * factor, n=4):
        processor = _load(twin, family_name, min_pixels, max_pixels)
        assert processor.full_processor is None
        assert isinstance(processor.image_processor, Qwen2VLImageProcessorPil)
        assert_same_inputs(processor, peer, min_pixels, max_pixels, _images(sizes, rng))


@needs_torchvision
@pytest.mark.parametrize("twin, family_name, processor_class, factor", QWEN_TWINS)
def test_full_processor_resizes_as_training_does(twin, family_name, processor_class, factor):
    """The full processor mmlora keeps (and saves) carries the recipe's bounds, not the file's:
    called on its own it gives the training inputs."""
    processor = _load(twin, family_name, factor * factor, 4 * factor * factor)
    full = processor.full_processor
    assert full.image_processor is processor.image_processor
    assert dict(full.image_processor.size)["longest_edge"] == 4 * factor * factor
    images = [Image.new("RGB", (640, 480), "red")]
    text = processor.render(_messages(1))
    own = full(text=[text], images=images, return_tensors="pt")
    encoded = processor.encode(text, images)
    assert own["input_ids"][0].tolist() == encoded.input_ids
    # 640x480 in 4 tokens' worth of pixels: one merged row of two (the twin's own bounds give 54+).
    assert own["image_grid_thw"].tolist() == encoded.image_grid_thw.tolist() == [[1, 2, 4]]


@needs_torchvision
def test_real_chat_template_render_matches():
    """The twins' template through the real processor renders what mmlora renders."""
    from transformers import AutoProcessor

    from mmlora.models.tiny import tiny_dir

    for twin, family_name, _, _ in QWEN_TWINS:
        processor = _load(twin, family_name, 3136, 50176)
        peer = AutoProcessor.from_pretrained(tiny_dir(twin))
        assert peer.apply_chat_template(_messages(2), tokenize=False) == processor.render(_messages(2))


@needs_torchvision
def test_every_twin_builds_its_published_processor_class():
    """With torchvision every family's full processor builds from the twin's published-layout
    files, as the class its preprocessor_config.json names, holding mmlora's image processor."""
    import json

    from mmlora.models.families import FAMILIES
    from mmlora.models.processor import load_processor
    from mmlora.models.tiny import tiny_dir

    for family in FAMILIES:
        folder = tiny_dir(family.tiny.model_id)
        processor = load_processor(str(folder), family, 3136, 50176)
        published = json.loads((folder / "preprocessor_config.json").read_text())["processor_class"]
        assert type(processor.full_processor).__name__ == published, family.name
        assert processor.full_processor.image_processor is processor.image_processor


@needs_torchvision
def test_a_full_processor_that_fails_to_build_falls_back_to_image_only(monkeypatch, caplog):
    """_try_full_processor: any failure of AutoProcessor (a missing extra such as num2words for
    SmolVLM2) leaves the image-only path, with a log line."""
    import logging

    from transformers import AutoProcessor

    def refuse(*args, **kwargs):
        raise ImportError("needs num2words")

    monkeypatch.setattr(AutoProcessor, "from_pretrained", refuse)
    with caplog.at_level(logging.INFO, logger="mmlora.models.processor"):
        processor = _load("tiny/qwen2-vl", "qwen2_vl", 3136, 50176)
    assert processor.full_processor is None
    assert "full processor unavailable" in caplog.text and "needs num2words" in caplog.text
    encoded = processor.encode(processor.render(_messages(1)), [Image.new("RGB", (112, 168))])
    assert encoded.image_grid_thw.tolist() == [[1, 12, 8]]


@needs_torchvision
def test_mixture_sources_reach_the_real_processor_at_their_own_bounds(tmp_path):
    """data.train as a mixture whose sources set their own min/max_pixels: every training example
    equals the real Qwen2VLProcessor's output at that source's bounds, token and pixel for pixel."""
    import json

    from transformers import AutoProcessor

    from mmlora.config.loading import recipe_from_dict
    from mmlora.data.scan import TrainingDataset, load_data_processor, scan_split
    from mmlora.models.tiny import tiny_dir

    rng = random.Random(3)
    sources, bounds = [], [(28 * 28, 6 * 28 * 28), (96 * 28 * 28, 200 * 28 * 28), (None, 9 * 28 * 28)]
    for k, (low, high) in enumerate(bounds):
        _images([(rng.randint(60, 500), rng.randint(60, 500))], rng)[0].save(tmp_path / f"{k}.png")
        rows = [{"image": f"{k}.png", "question": "What is it?", "answer": f"source {k}"}] * 2
        (tmp_path / f"{k}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        sources.append({"path": str(tmp_path / f"{k}.jsonl"), "min_pixels": low, "max_pixels": high})
    recipe = recipe_from_dict({"model": {"name": "tiny/qwen2-vl", "max_pixels": 224 * 224},
                               "data": {"train": sources, "max_length": 4096}})
    processor = load_data_processor(recipe.model)
    scan = scan_split(recipe.data.train, recipe.data, processor, "train", progress=False)
    dataset = TrainingDataset(scan, processor, recipe.data, seed=0)
    peer = AutoProcessor.from_pretrained(tiny_dir("tiny/qwen2-vl"))
    for position in range(len(dataset)):
        example, sample = dataset[position], scan.samples[dataset.order[position]]
        k = int(sample.messages[-1]["content"][0]["text"].split()[-1])
        low, high = bounds[k][0] or recipe.model.min_pixels, bounds[k][1]
        expected = peer(text=[processor.render(sample.messages)], images=[Image.open(sample.images[0])],
                        return_tensors="pt", size={"shortest_edge": low, "longest_edge": high})
        assert example.input_ids == expected["input_ids"][0].tolist()
        assert torch.equal(example.image_grid_thw, expected["image_grid_thw"])
        assert torch.equal(example.pixel_values, expected["pixel_values"])
