"""The tiny twins' processor files follow their real checkpoints' published layout, and
`mmlora tiny DIR` writes exactly the shipped files."""

from __future__ import annotations

import json

import pytest

from mmlora.models.tiny import (
    PROCESSOR_FILES, TINY_MODELS, TINY_SPECS, processor_files, tiny_dir, write_tiny_assets,
)

# Key order of each published checkpoint's preprocessor_config.json (Qwen/Qwen2-VL-2B-Instruct,
# Qwen2.5-VL-3B-Instruct, Qwen3-VL-2B-Instruct, llava-hf/llava-1.5-7b-hf,
# llava-v1.6-mistral-7b-hf, HuggingFaceTB/SmolVLM-256M-Instruct, google/gemma-3-4b-it,
# paligemma-3b-pt-224), and which other processor files the checkpoint has.
_QWEN2 = ["min_pixels", "max_pixels", "patch_size", "temporal_patch_size", "merge_size", "image_mean",
          "image_std", "image_processor_type", "processor_class"]
_CLIP = ["crop_size", "do_center_crop", "do_convert_rgb", "do_normalize", "do_rescale", "do_resize",
         "image_mean", "image_processor_type", "image_std", "processor_class", "resample", "rescale_factor", "size"]
PUBLISHED = {
    "tiny/qwen2-vl": (_QWEN2, set()),
    "tiny/qwen2.5-vl": (_QWEN2, set()),
    "tiny/qwen3-vl": (["size", "patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std",
                       "processor_class", "image_processor_type"], {"video_preprocessor_config.json"}),
    "tiny/llava": (_CLIP, {"processor_config.json"}),
    "tiny/llava-next": (["aspect_ratio_setting", *_CLIP[:4], "do_pad", *_CLIP[4:6], "image_grid_pinpoints",
                         *_CLIP[6:]], {"processor_config.json"}),
    "tiny/smolvlm": (["do_convert_rgb", "do_image_splitting", "do_normalize", "do_pad", "do_rescale", "do_resize",
                      "image_mean", "image_processor_type", "image_std", "max_image_size", "processor_class",
                      "resample", "rescale_factor", "size"], {"processor_config.json"}),
    "tiny/gemma3": (["do_convert_rgb", "do_normalize", "do_pan_and_scan", "do_rescale", "do_resize", "image_mean",
                     "image_processor_type", "image_seq_length", "image_std", "pan_and_scan_max_num_crops",
                     "pan_and_scan_min_crop_size", "pan_and_scan_min_ratio_to_activate", "processor_class",
                     "resample", "rescale_factor", "size"], {"processor_config.json"}),
    "tiny/paligemma": (["do_convert_rgb", "do_normalize", "do_rescale", "do_resize", "image_mean",
                        "image_processor_type", "image_seq_length", "image_std", "processor_class", "resample",
                        "rescale_factor", "size"], set()),
}
OPTIONAL_FILES = {"processor_config.json", "video_preprocessor_config.json"}


def test_every_twin_is_listed():
    assert set(PUBLISHED) == set(TINY_MODELS)


@pytest.mark.parametrize("model_id", sorted(PUBLISHED))
def test_twin_processor_files_follow_the_published_layout(model_id):
    keys, other_files = PUBLISHED[model_id]
    folder = tiny_dir(model_id)
    assert list(json.loads((folder / "preprocessor_config.json").read_text())) == keys
    assert {name for name in OPTIONAL_FILES if (folder / name).is_file()} == other_files


@pytest.mark.parametrize("model_id", sorted(PUBLISHED))
def test_shipped_processor_files_are_what_the_family_describes(model_id):
    """`python -m mmlora.models.tiny` would write the shipped files again (the rest of the twin is
    checked by the rebuild below on two twins: tokenizer training is slower)."""
    for name, contents in processor_files(TINY_SPECS[model_id]).items():
        assert (tiny_dir(model_id) / name).read_text() == json.dumps(contents, indent=2) + "\n", name


def test_qwen_twins_bounds():
    """The twins' small bounds, in the published spelling of each (top-level for Qwen2/2.5-VL)."""
    for model_id in ("tiny/qwen2-vl", "tiny/qwen2.5-vl"):
        config = json.loads((tiny_dir(model_id) / "preprocessor_config.json").read_text())
        assert (config["min_pixels"], config["max_pixels"]) == (56 * 56, 224 * 224)
    config = json.loads((tiny_dir("tiny/qwen3-vl") / "preprocessor_config.json").read_text())
    assert config["size"] == {"longest_edge": 256 * 256, "shortest_edge": 64 * 64}


@pytest.mark.parametrize("model_id", ["tiny/qwen3-vl", "tiny/paligemma"])
def test_rebuilding_a_twin_reproduces_the_shipped_files(model_id, tmp_path):
    """`python -m mmlora.models.tiny` writes what ships (tokenizer and config included)."""
    write_tiny_assets(model_id, tmp_path)
    shipped = sorted(p.name for p in tiny_dir(model_id).iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == shipped
    for name in shipped:
        assert (tmp_path / name).read_bytes() == (tiny_dir(model_id) / name).read_bytes(), name


@pytest.mark.parametrize("model_id", ["tiny/qwen2-vl", "tiny/smolvlm"])
def test_mmlora_tiny_writes_the_shipped_processor_files(model_id, tmp_path, capsys):
    """Issue #11: `mmlora tiny DIR` wrote other pixel bounds than the shipped twin's."""
    from transformers import AutoImageProcessor

    from mmlora.cli import main

    assert main(["tiny", str(tmp_path / "out"), "--model-id", model_id]) == 0
    out = tmp_path / "out"
    for name in PROCESSOR_FILES:
        shipped = tiny_dir(model_id) / name
        assert (out / name).is_file() == shipped.is_file(), name
        if shipped.is_file():
            assert (out / name).read_bytes() == shipped.read_bytes(), name
    assert (out / "model.safetensors").is_file()
    size = dict(AutoImageProcessor.from_pretrained(out).size)
    expected = dict(AutoImageProcessor.from_pretrained(tiny_dir(model_id)).size)
    assert size == expected
