"""Offline tiny models: every family's twin, randomly initialised, with a real processor.

Each family's `TinySpec` (mmlora/families) says how its twin is built. The processor files
(byte-level BPE tokenizer with the family's special tokens, its chat template, and
preprocessor_config.json / processor_config.json / video_preprocessor_config.json in the key
layout of the family's published checkpoint, with small image sizes) and the model config
ship under `assets/tiny-<name>/`, so `tiny/<name>` loads through exactly the same code as a real
checkpoint directory; only the weights are built here, from a seed, instead of read from disk.
`python -m mmlora.models.tiny [ID ...]` rebuilds the shipped files.
"""

from __future__ import annotations

import json
from pathlib import Path

from mmlora.config.paths import assets_dir
from mmlora.models.families import FAMILIES, TinySpec

TINY_SPECS: dict[str, TinySpec] = {f.tiny.model_id: f.tiny for f in FAMILIES if f.tiny}
TINY_MODELS = {model_id: "tiny-" + model_id.split("/", 1)[1] for model_id in TINY_SPECS}
"""Built-in offline ids -> folder under assets/."""

TINY_SEED = 1234

# Qwen2's pre-tokenizer split (letters, single digits, punctuation runs, newlines, spaces).
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_GENERAL_TEXT = """\
You are a helpful assistant. Describe the image. Answer the question about the picture.
The photo shows a person, a dog, a cat, a car, a tree, a house, a table and a cup of coffee.
There are two birds in the sky and one boat on the water. How many people are there?
Is it day or night? What is the man holding? The woman is reading a book in the park.
Yes. No. Left, right, top, bottom, small, large, dark, light, old, new, 0 1 2 3 4 5 6 7 8 9.
"""


def tiny_dir(model_id: str) -> Path:
    """The shipped folder of a built-in tiny id."""
    return assets_dir() / TINY_MODELS[model_id]


def is_tiny(name: str) -> bool:
    return name in TINY_MODELS


def build_tiny_model(model_id: str, dtype=None):
    """A randomly initialised model from the shipped config; the same seed gives the same weights."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(tiny_dir(model_id))
    # Re-seed locally and restore the caller's RNG, so building a model never shifts the
    # random stream of the code around it (data order, LoRA init).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype or torch.float32)
    # Recorded in saved adapters as the base model, so `--adapter DIR` alone can rebuild it.
    model.config._name_or_path = model_id
    model.name_or_path = model_id
    return model


def _train_tokenizer(spec: TinySpec, out_dir: Path):
    """A 512-token byte-level BPE trained on the demo's words, with the family's special tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import AutoTokenizer, Qwen2Tokenizer, TokenizersBackend

    from mmlora.data.synthetic import vocabulary_text

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=list(spec.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Demo words repeated so they become whole tokens: answers stay 1-2 tokens long.
    corpus = [vocabulary_text()] * 20 + [_GENERAL_TEXT] * 5
    bpe.train_from_iterator(corpus, trainer)
    raw_path = out_dir / "tokenizer.json"
    bpe.save(str(raw_path))
    if spec.tokenizer_class == "Qwen2Tokenizer":
        tokenizer = Qwen2Tokenizer(tokenizer_file=str(raw_path), **spec.tokenizer_roles)
    else:
        roles = {k: v for k, v in spec.tokenizer_roles.items() if v is not None}
        extra = {"extra_special_tokens": dict(spec.named_tokens)} if spec.named_tokens else {}
        tokenizer = TokenizersBackend(tokenizer_file=str(raw_path), **roles, **extra)
    tokenizer.chat_template = spec.chat_template
    tokenizer.save_pretrained(out_dir)
    # Read back as users will: named tokens (e.g. Gemma 3's boi_token) must survive the round trip.
    return AutoTokenizer.from_pretrained(out_dir)


def processor_files(spec: TinySpec) -> dict[str, dict]:
    """The twin's image/video processor files, in its published checkpoint's layout."""
    files = {"preprocessor_config.json": spec.preprocessor_config,
             "processor_config.json": spec.processor_config,
             "video_preprocessor_config.json": spec.video_preprocessor_config}
    return {name: contents for name, contents in files.items() if contents}


PROCESSOR_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "preprocessor_config.json",
                   "processor_config.json", "video_preprocessor_config.json")
"""Every shipped file of a twin but config.json (the model writes its own)."""


def copy_processor_files(model_id: str, out_dir: Path) -> None:
    """Copy the shipped twin's processor files (tokenizer, template, image settings) verbatim:
    a saved tiny checkpoint has exactly the twin's bounds and layout."""
    import shutil

    for name in PROCESSOR_FILES:
        if (tiny_dir(model_id) / name).is_file():
            shutil.copyfile(tiny_dir(model_id) / name, Path(out_dir) / name)


def write_tiny_assets(model_id: str, out_dir: Path) -> None:
    """Train the tiny tokenizer and write tokenizer, chat template, image processor and config."""
    spec = TINY_SPECS[model_id]
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(spec, out_dir)
    (out_dir / "chat_template.jinja").write_text(spec.chat_template)
    for name, contents in processor_files(spec).items():
        (out_dir / name).write_text(json.dumps(contents, indent=2) + "\n")
    config = spec.config(tokenizer.convert_tokens_to_ids, len(tokenizer))
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")


if __name__ == "__main__":
    import sys

    for model_id in sys.argv[1:] or TINY_MODELS:
        write_tiny_assets(model_id, tiny_dir(model_id))
        print(f"wrote {tiny_dir(model_id)}")
