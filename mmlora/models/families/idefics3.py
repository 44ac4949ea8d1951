"""Idefics3 and SmolVLM: a SigLIP tower, a pixel-shuffle connector, a Llama-style decoder.

An image is resized so its longest edge is a whole number of tiles, cut into rows x cols tiles
plus one downscaled global view; each becomes `image_seq_len` <image> tokens, introduced by
<fake_token_around_image> and a <row_i_col_j> (or <global-img>) tag. SmolVLM (v1) checkpoints
use model_type idefics3; SmolVLM2 uses smolvlm with the same layout.
"""

from __future__ import annotations

from mmlora.models.families.base import (Family, ImageTokens, TinySpec, tile_bounds, tiny_text_config,
                                         tiny_vision_config)

IMAGE, AROUND, GLOBAL = "<image>", "<fake_token_around_image>", "<global-img>"

# SmolVLM-Instruct's chat template (the format, restated): "User:<image>Q<end_of_utterance>\n
# Assistant: A<end_of_utterance>\n"; the role is followed by ':' alone when an image comes first.
SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'] is not string and message['content'][0]['type'] == 'image' %}:"
    "{% else %}: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}<image>{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


def image_seq_len(config) -> int:
    """<image> tokens per tile: the tile's patches after the connector's pixel shuffle."""
    vision = config.vision_config
    return (vision.image_size // vision.patch_size) ** 2 // config.scale_factor**2


def idefics3_image_tokens(image_processor, config, vision: dict, k: int):
    """Tiles row by row (a newline after each row), then the global view."""
    rows = [r for per_sample in vision["rows"] for r in per_sample][k]
    cols = [c for per_sample in vision["cols"] for c in per_sample][k]
    seq = image_seq_len(config)
    global_view = AROUND + GLOBAL + IMAGE * seq + AROUND
    if rows == 0 and cols == 0:  # small enough for one tile: the global view alone
        return ImageTokens(seq, global_view)
    tiles = "".join(
        "".join(f"{AROUND}<row_{r + 1}_col_{c + 1}>" + IMAGE * seq for c in range(cols)) + "\n"
        for r in range(rows)
    )
    return ImageTokens(seq * (rows * cols + 1), tiles + "\n" + global_view)


_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<end_of_utterance>", AROUND, IMAGE, GLOBAL) + tuple(
    f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)
)
_ROLES = {"bos_token": "<|im_start|>", "eos_token": "<end_of_utterance>", "pad_token": "<|im_end|>",
          "unk_token": "<|endoftext|>"}


def tiny_smolvlm_config(token_id, vocab_size: int) -> dict:
    """SmolVLM-style Idefics3: Llama decoder (2 layers, hidden 64), SigLIP tower on 56-px tiles."""
    return {
        "architectures": ["Idefics3ForConditionalGeneration"],
        "model_type": "idefics3",
        "image_token_id": token_id(IMAGE),
        "scale_factor": 2,
        "tie_word_embeddings": False,
        "text_config": tiny_text_config("llama", vocab_size, token_id("<|im_start|>"),
                                        token_id("<end_of_utterance>"), token_id("<|im_end|>")),
        "vision_config": tiny_vision_config("idefics3_vision"),
    }


# SmolVLM-256M-Instruct's layout; longest edge 112 = 2 tiles of 56: up to 2x2 tiles + the global
# view per image.
_TINY_PREPROCESSOR = {
    "do_convert_rgb": True, "do_image_splitting": True, "do_normalize": True, "do_pad": True,
    "do_rescale": True, "do_resize": True, "image_mean": [0.5] * 3, "image_processor_type": "Idefics3ImageProcessor",
    "image_std": [0.5] * 3, "max_image_size": {"longest_edge": 56}, "processor_class": "Idefics3Processor",
    "resample": 1, "rescale_factor": 1 / 255, "size": {"longest_edge": 112},
}


IDEFICS3 = Family(
    name="idefics3",
    model_types=("idefics3", "smolvlm"),
    vision_tower="model.vision_model",
    projector=("model.connector",),
    language_model="model.text_model",
    image_token=IMAGE,
    turn_end="<end_of_utterance>",
    image_tokens=idefics3_image_tokens,
    vision_inputs=("pixel_values", "pixel_attention_mask"),
    image_processor_kwargs=(("return_row_col_info", True),),
    image_size_options=tile_bounds,
    feature_cache_refusal=(
        "get_image_features returns one feature block per sample (all tiles of all its images "
        "joined, zero-padded images dropped by value), not per image; mmlora does not split it "
        "per tile yet"
    ),
    tiny=TinySpec("tiny/smolvlm", _TOKENS, _ROLES, SMOLVLM_CHAT_TEMPLATE, tiny_smolvlm_config,
                  _TINY_PREPROCESSOR,
                  processor_config={"image_seq_len": 4, "processor_class": "Idefics3Processor"}),
)
