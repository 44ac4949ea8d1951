"""Offline tiny models: a randomly initialised Qwen2-VL with a real processor.

The processor files (byte-level BPE tokenizer with Qwen2-VL's special tokens, Qwen2-VL's chat
template, image processor settings) and the model config are shipped under
`assets/tiny-qwen2-vl/`, so `tiny/qwen2-vl` loads through exactly the same code as a real
checkpoint directory; only the weights are built here, from a seed, instead of read from disk.
`python -m mmlora.tiny` rebuilds the shipped files.
"""

from __future__ import annotations

import json
from pathlib import Path

from mmlora.paths import assets_dir

TINY_MODELS = {"tiny/qwen2-vl": "tiny-qwen2-vl"}
"""Built-in offline ids -> folder under assets/."""

TINY_SEED = 1234

QWEN2_VL_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]

# Qwen2-VL-Instruct's chat template (the format, restated): a default system turn, one
# <|vision_start|><|image_pad|><|vision_end|> per image part, <|im_end|> closing every turn.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

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


def tiny_config_dict(vocab_size: int) -> dict:
    """Qwen2-VL config: 2 text layers of hidden 64, vision depth 2.

    The text initializer_range is 0.25 rather than 0.02: with the default, the frozen lm_head
    and final norm keep logits near +-1 and the loss cannot fall below ~4.5 whatever LoRA learns.
    """
    ids = {tok: i for i, tok in enumerate(QWEN2_VL_SPECIAL_TOKENS)}
    return {
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "model_type": "qwen2_vl",
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "tie_word_embeddings": False,
        "text_config": {
            "model_type": "qwen2_vl_text",
            "vocab_size": vocab_size,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "initializer_range": 0.25,
            # head_dim 16 -> 8 rotary frequencies split over (temporal, height, width).
            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1000000.0},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        "vision_config": {
            "model_type": "qwen2_vl",
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": 64,
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
    }


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


def write_tiny_assets(out_dir: Path) -> None:
    """Train the tiny tokenizer and write tokenizer, chat template, image processor and config."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from mmlora.synthetic import vocabulary_text

    out_dir.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=QWEN2_VL_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Demo words repeated so they become whole tokens: answers stay 1-2 tokens long.
    corpus = [vocabulary_text()] * 20 + [_GENERAL_TEXT] * 5
    bpe.train_from_iterator(corpus, trainer)
    raw_path = out_dir / "tokenizer.json"
    bpe.save(str(raw_path))
    tokenizer = Qwen2Tokenizer(
        tokenizer_file=str(raw_path), eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token=None, bos_token=None,
    )
    tokenizer.chat_template = QWEN2_VL_CHAT_TEMPLATE
    tokenizer.save_pretrained(out_dir)
    (out_dir / "chat_template.jinja").write_text(QWEN2_VL_CHAT_TEMPLATE)
    Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=224 * 224).save_pretrained(out_dir)
    config = tiny_config_dict(vocab_size=len(tokenizer))
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")


if __name__ == "__main__":
    target = assets_dir() / TINY_MODELS["tiny/qwen2-vl"]
    write_tiny_assets(target)
    print(f"wrote {target}")
