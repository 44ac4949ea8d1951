"""Reload saved folders the way a server does and compare with mmlora's training inputs.

Run by tests/models/test_saved_folders.py in a fresh interpreter with or without torchvision
(tests/torchvision_peer.py run_script). Argument: a JSON list of {"model", "min_pixels", "max_pixels",
"folder"?}; without "folder" the processor's files are written into a temporary folder first.
Prints one line `RESULT <json>`: per entry, what AutoProcessor / AutoImageProcessor /
AutoTokenizer and mmlora's own loader make of the folder, compared with the training path.
"""

import json
import sys
import tempfile

import torch
from PIL import Image

from mmlora.config.schema import ModelConfig
from mmlora.data.collate import encode_for_training
from mmlora.data.samples import Sample, assistant_turn, user_turn
from mmlora.models.families import family_for_model_type
from mmlora.models.loading import _source_dir, load_config
from mmlora.models.processor import load_processor

IMAGE = Image.new("RGB", (331, 217), (200, 30, 40))  # larger than every bound used here
for x in range(0, 331, 7):
    for y in range(0, 217, 5):
        IMAGE.putpixel((x, y), (x % 256, y % 256, (x * y) % 256))
MESSAGES = [user_turn("What colour is it?"), assistant_turn("red")]


def same(a, b) -> bool:
    return a is not None and b is not None and tuple(a.shape) == tuple(b.shape) and torch.equal(a, b)


def vision_matches(expected: dict, got) -> dict:
    return {key: same(value, got.get(key)) for key, value in expected.items()}


def check(entry: dict) -> dict:
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    cfg = ModelConfig(name=entry["model"], min_pixels=entry["min_pixels"], max_pixels=entry["max_pixels"])
    config = load_config(cfg.name, cfg)
    family = family_for_model_type(config.model_type)
    trained = load_processor(_source_dir(cfg.name), family, cfg.min_pixels, cfg.max_pixels, model_config=config)
    example = encode_for_training(trained, Sample([IMAGE], MESSAGES, "check"), 100_000)
    folder = entry.get("folder")
    if folder is None:
        folder = tempfile.mkdtemp()
        try:  # as load_model_and_processor sets it (absent before the train<->serve contract)
            from mmlora.models.processor_files import model_record
        except ImportError:
            model_record = None
        if model_record is not None:
            trained.record = model_record(cfg.name, family, config, cfg.min_pixels, cfg.max_pixels)
        trained.save_pretrained(folder)
    out = {"grid": example.image_grid_thw.tolist() if example.image_grid_thw is not None else None}

    images = AutoImageProcessor.from_pretrained(folder)
    out["image_processor"] = vision_matches(
        example.vision_inputs, images(images=[IMAGE], return_tensors="pt", **dict(family.image_processor_kwargs)))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    out["template"] = tokenizer.apply_chat_template(MESSAGES, tokenize=False) == trained.render(MESSAGES)

    try:
        auto = AutoProcessor.from_pretrained(folder)
    except ImportError as err:  # a processor class that needs torchvision, named as such
        out["processor"] = "ImportError: " + str(err).strip().splitlines()[0]
    else:
        out["processor"] = type(auto).__name__
        if hasattr(auto, "image_processor"):
            served = [{"role": "user", "content": [{"type": "image", "image": IMAGE},
                                                   {"type": "text", "text": "What colour is it?"}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "red"}]}]
            got = auto.apply_chat_template(served, tokenize=True, return_dict=True, return_tensors="pt")
            out["input_ids"] = got["input_ids"][0].tolist() == example.input_ids
            out["vision"] = vision_matches(example.vision_inputs, got)

    reloaded = load_processor(folder, family, cfg.min_pixels, cfg.max_pixels, model_config=config)
    again = encode_for_training(reloaded, Sample([IMAGE], MESSAGES, "check"), 100_000)
    out["mmlora"] = again.input_ids == example.input_ids and all(
        vision_matches(example.vision_inputs, again.vision_inputs).values())
    return out


if __name__ == "__main__":
    results = [check(entry) for entry in json.loads(sys.argv[1])]
    print("RESULT " + json.dumps(results))
