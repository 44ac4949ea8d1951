"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL: native-resolution vision towers with a 2x2 patch merge.

The placeholder `<|image_pad|>` becomes one token per merged patch group (image_grid_thw / 4),
so `min_pixels` / `max_pixels` bound the visual tokens per image. The forward needs
`mm_token_type_ids` to place 3-D mRoPE positions.
"""

from __future__ import annotations

from mmlora.models.families.features import GRID
from mmlora.models.families.base import (
    Family, TinySpec, mm_token_types, pixel_bounds, repeated, tiny_text_config,
)

IMAGE_PAD = "<|image_pad|>"

QWEN2_VL_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
QWEN3_VL_SPECIAL_TOKENS = QWEN2_VL_SPECIAL_TOKENS + ("<think>", "</think>")

_QWEN_TOKENIZER = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None, "bos_token": None}


def _qwen_chat_template(default_system: str | None) -> str:
    """Qwen-VL-Instruct's chat template (the format, restated): one
    <|vision_start|><|image_pad|><|vision_end|> per image part, <|im_end|> closing every turn.
    Qwen2/2.5-VL add a default system turn; Qwen3-VL has none."""
    system = (
        "{% if loop.first and message['role'] != 'system' %}"
        f"<|im_start|>system\n{default_system}<|im_end|>\n{{% endif %}}"
    ) if default_system else ""
    return (
        "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
        "{% for message in messages %}" + system +
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


QWEN2_VL_CHAT_TEMPLATE = _qwen_chat_template("You are a helpful assistant.")
QWEN3_VL_CHAT_TEMPLATE = _qwen_chat_template(None)


def qwen_image_tokens(image_processor, config, vision: dict, k: int):
    """One <|image_pad|> per merged patch group of image k (its t*h*w grid / merge_size^2)."""
    count = int(vision["image_grid_thw"][k].prod()) // image_processor.merge_size**2
    return repeated(IMAGE_PAD, count)


def _token_ids(token_id) -> dict:
    return {
        "image_token_id": token_id("<|image_pad|>"),
        "video_token_id": token_id("<|video_pad|>"),
        "vision_start_token_id": token_id("<|vision_start|>"),
        "vision_end_token_id": token_id("<|vision_end|>"),
    }


def _text_config(model_type: str, token_id, vocab_size: int, **extra) -> dict:
    return tiny_text_config(
        model_type, vocab_size, token_id("<|endoftext|>"), token_id("<|im_end|>"), token_id("<|endoftext|>"),
        # head_dim 16 -> 8 rotary frequencies split over (temporal, height, width).
        rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1000000.0},
        **extra,
    )


def tiny_qwen2_vl_config(token_id, vocab_size: int) -> dict:
    """Qwen2-VL: 2 text layers of hidden 64, vision depth 2 (the shipped tiny/qwen2-vl)."""
    return {
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "model_type": "qwen2_vl",
        **_token_ids(token_id),
        "tie_word_embeddings": False,
        "text_config": _text_config("qwen2_vl_text", token_id, vocab_size),
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


def tiny_qwen2_5_vl_config(token_id, vocab_size: int) -> dict:
    """Qwen2.5-VL: windowed vision attention (one full-attention block of two), SwiGLU MLPs."""
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        **_token_ids(token_id),
        "tie_word_embeddings": False,
        "text_config": _text_config("qwen2_5_vl_text", token_id, vocab_size),
        "vision_config": {
            "model_type": "qwen2_5_vl",
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 64,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [1],
        },
    }


def tiny_qwen3_vl_config(token_id, vocab_size: int) -> dict:
    """Qwen3-VL: 16-px patches, learned position embeddings, one DeepStack merger."""
    text = _text_config("qwen3_vl_text", token_id, vocab_size, head_dim=16)
    text["rope_parameters"]["mrope_interleaved"] = True
    return {
        "architectures": ["Qwen3VLForConditionalGeneration"],
        "model_type": "qwen3_vl",
        **_token_ids(token_id),
        "tie_word_embeddings": False,
        "text_config": text,
        "vision_config": {
            "model_type": "qwen3_vl",
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 64,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "num_position_embeddings": 64,
            "deepstack_visual_indexes": [0],
        },
    }


_CLIP_MEAN, _CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def _qwen2_preprocessor(processor_class: str) -> dict:
    """Qwen2-VL-2B / Qwen2.5-VL-3B-Instruct's layout (top-level min/max_pixels, no `size`); the
    twin's bounds: 56x56 to 224x224 px."""
    return {"min_pixels": 56 * 56, "max_pixels": 224 * 224, "patch_size": 14, "temporal_patch_size": 2,
            "merge_size": 2, "image_mean": _CLIP_MEAN, "image_std": _CLIP_STD,
            "image_processor_type": "Qwen2VLImageProcessor", "processor_class": processor_class}


def _qwen3_preprocessor(longest_edge: int, type_key: str, type_name: str) -> dict:
    """Qwen3-VL-2B-Instruct's layout (a `size` dict in pixels, the fast class name); the twin's
    images from 64x64 px (its videos' frames share the minimum, as published)."""
    return {"size": {"longest_edge": longest_edge, "shortest_edge": 64 * 64}, "patch_size": 16,
            "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
            "processor_class": "Qwen3VLProcessor", type_key: type_name}


def _qwen_family(name: str, model_type: str, tiny: TinySpec, projector=("model.visual.merger",)) -> Family:
    return Family(
        name=name,
        model_types=(model_type,),
        vision_tower="model.visual",
        projector=projector,
        language_model="model.language_model",
        image_token=IMAGE_PAD,
        turn_end="<|im_end|>",
        image_tokens=qwen_image_tokens,
        vision_inputs=("pixel_values", "image_grid_thw"),
        text_inputs=mm_token_types,
        image_size_options=pixel_bounds,
        merge_size=2,
        feature_layout=GRID,
        tiny=tiny,
    )


QWEN2_VL = _qwen_family("qwen2_vl", "qwen2_vl", TinySpec(
    "tiny/qwen2-vl", QWEN2_VL_SPECIAL_TOKENS, _QWEN_TOKENIZER, QWEN2_VL_CHAT_TEMPLATE,
    tiny_qwen2_vl_config, _qwen2_preprocessor("Qwen2VLProcessor"), tokenizer_class="Qwen2Tokenizer",
))
QWEN2_5_VL = _qwen_family("qwen2_5_vl", "qwen2_5_vl", TinySpec(
    "tiny/qwen2.5-vl", QWEN2_VL_SPECIAL_TOKENS, _QWEN_TOKENIZER, QWEN2_VL_CHAT_TEMPLATE,
    tiny_qwen2_5_vl_config, _qwen2_preprocessor("Qwen2_5_VLProcessor"), tokenizer_class="Qwen2Tokenizer",
))
# Qwen3-VL's DeepStack mergers feed intermediate vision features into early decoder layers:
# they project vision features into the language space, so they belong to the projector.
QWEN3_VL = _qwen_family("qwen3_vl", "qwen3_vl", TinySpec(
    "tiny/qwen3-vl", QWEN3_VL_SPECIAL_TOKENS, _QWEN_TOKENIZER, QWEN3_VL_CHAT_TEMPLATE,
    tiny_qwen3_vl_config, _qwen3_preprocessor(256 * 256, "image_processor_type", "Qwen2VLImageProcessorFast"),
    tokenizer_class="Qwen2Tokenizer",
    video_preprocessor_config=_qwen3_preprocessor(384 * 256, "video_processor_type", "Qwen3VLVideoProcessor"),
), projector=("model.visual.merger", "model.visual.deepstack_merger_list"))
