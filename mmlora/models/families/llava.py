"""LLaVA 1.5 and LLaVA-NeXT (1.6): a CLIP tower, a two-layer MLP projector, a Llama/Mistral decoder.

LLaVA 1.5 turns every image into a fixed grid of visual tokens (576 at 336 px); LLaVA-NeXT
("anyres") adds tiles at the best of its grid pinpoints, cropped back to the image's aspect
ratio, plus one newline token per row. mmlora uses its own chat templates for both: the
llava-hf templates close no assistant turn with an end-of-turn token, so the model could never
learn where its answer ends.
"""

from __future__ import annotations

from mmlora.models.families.base import Family, TinySpec, repeated, tiny_text_config, tiny_vision_config
from mmlora.models.families.features import BATCH_LISTED

IMAGE = "<image>"
_TEXT_OF = (
    "{% macro text_of(content) %}{% if content is string %}{{ content }}{% else %}"
    "{% for part in content if part['type'] == 'text' %}{{ part['text'] }}{% endfor %}{% endif %}"
    "{% endmacro %}"
)
_IMAGES_OF = (
    "{% if message['content'] is not string %}{% for part in message['content'] "
    "if part['type'] == 'image' %}<image>\n{% endfor %}{% endif %}"
)

# LLaVA 1.5 (Vicuna v1 conversation): "SYSTEM USER: <image>\nQ ASSISTANT: A</s>USER: ...".
VICUNA_CHAT_TEMPLATE = (
    _TEXT_OF + "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}{{ text_of(messages[0]['content']) }}"
    "{% else %}A chat between a curious human and an artificial intelligence assistant. The "
    "assistant gives helpful, detailed, and polite answers to the human's questions.{% endif %} "
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: " + _IMAGES_OF +
    "{{ text_of(message['content']) }} {% elif message['role'] == 'assistant' %}"
    "ASSISTANT: {{ text_of(message['content']) }}</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

# LLaVA-NeXT on Mistral-7B-Instruct: "[INST] <image>\nQ [/INST] A</s>"; a system message goes
# at the head of the first user turn (Mistral has no system role).
MISTRAL_CHAT_TEMPLATE = (
    _TEXT_OF + "{{ bos_token }}"
    "{% for message in messages %}{% if message['role'] == 'user' %}[INST] "
    "{% if loop.index0 == 1 and messages[0]['role'] == 'system' %}"
    "{{ text_of(messages[0]['content']) }}\n\n{% endif %}" + _IMAGES_OF +
    "{{ text_of(message['content']) }} [/INST]{% elif message['role'] == 'assistant' %}"
    " {{ text_of(message['content']) }}</s>{% endif %}{% endfor %}"
)


def _extra_class_token(config) -> int:
    """'full' keeps CLIP's class token as a visual token; 'default' drops it."""
    return 1 if config.vision_feature_select_strategy == "full" else 0


def llava_image_tokens(image_processor, config, vision: dict, k: int):
    """One <image> per vision patch of the (fixed-size) image k."""
    height, width = vision["pixel_values"][k].shape[-2:]
    patch = config.vision_config.patch_size
    return repeated(IMAGE, (height // patch) * (width // patch) + _extra_class_token(config))


def llava_next_image_tokens(image_processor, config, vision: dict, k: int):
    """Base tile + anyres tiles cropped to the image's aspect ratio + one newline per row."""
    from transformers.image_processing_utils import select_best_resolution

    orig_h, orig_w = (int(v) for v in vision["image_sizes"][k])
    tile_h, tile_w = vision["pixel_values"].shape[-2:]
    patch = config.vision_config.patch_size
    best_h, best_w = select_best_resolution((orig_h, orig_w), image_processor.image_grid_pinpoints)
    rows, cols = (tile_h // patch) * (best_h // tile_h), (tile_w // patch) * (best_w // tile_w)
    # The grid is fitted to the image's aspect ratio; the padded margin is dropped evenly.
    if orig_w / orig_h > cols / rows:
        rows -= 2 * ((rows - int(round(orig_h * (cols / orig_w), 7))) // 2)
    else:
        cols -= 2 * ((cols - int(round(orig_w * (rows / orig_h), 7))) // 2)
    base = (tile_h // patch) * (tile_w // patch) + _extra_class_token(config)
    return repeated(IMAGE, rows * cols + rows + base)


_LLAMA_TOKENS = ("<unk>", "<s>", "</s>", IMAGE, "<pad>")
_LLAMA_ROLES = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
_CLIP_MEAN, _CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
_PINPOINTS = [[56, 112], [112, 56], [112, 112]]


def _tiny_llava_config(model_type: str, architecture: str, token_id, vocab_size: int, **extra) -> dict:
    """Llama decoder (2 layers, hidden 64) + CLIP tower (2 layers, 56-px images, 14-px patches)."""
    return {
        "architectures": [architecture],
        "model_type": model_type,
        "image_token_index": token_id(IMAGE),
        "image_seq_length": 16,
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "tie_word_embeddings": False,
        **extra,
        "text_config": tiny_text_config("llama", vocab_size, token_id("<s>"), token_id("</s>"),
                                        token_id("<pad>")),
        "vision_config": tiny_vision_config("clip_vision_model", projection_dim=32),
    }


def tiny_llava_config(token_id, vocab_size: int) -> dict:
    return _tiny_llava_config("llava", "LlavaForConditionalGeneration", token_id, vocab_size)


def tiny_llava_next_config(token_id, vocab_size: int) -> dict:
    return _tiny_llava_config("llava_next", "LlavaNextForConditionalGeneration", token_id, vocab_size,
                              image_grid_pinpoints=_PINPOINTS)


def _clip_preprocessor(processor_class: str, **extra) -> dict:
    """llava-1.5-7b-hf's / llava-v1.6-mistral-7b-hf's layout (keys sorted, as published), the
    twin's 56-px CLIP input; `extra` adds or replaces keys (LLaVA-NeXT's anyres settings)."""
    keys = {"crop_size": {"height": 56, "width": 56}, "do_center_crop": True, "do_convert_rgb": True,
            "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": _CLIP_MEAN,
            "image_processor_type": "CLIPImageProcessor", "image_std": _CLIP_STD,
            "processor_class": processor_class, "resample": 3, "rescale_factor": 1 / 255,
            "size": {"shortest_edge": 56}, **extra}
    return dict(sorted(keys.items()))


def _processor_config(processor_class: str) -> dict:
    return {"image_token": IMAGE, "num_additional_image_tokens": 1, "patch_size": 14,
            "processor_class": processor_class, "vision_feature_select_strategy": "default"}


_PATHS = dict(vision_tower="model.vision_tower", projector=("model.multi_modal_projector",),
              language_model="model.language_model", image_token=IMAGE, turn_end="</s>")

LLAVA = Family(
    name="llava", model_types=("llava",), **_PATHS,
    image_tokens=llava_image_tokens,
    chat_template=VICUNA_CHAT_TEMPLATE,
    feature_layout=BATCH_LISTED,
    tiny=TinySpec("tiny/llava", _LLAMA_TOKENS, _LLAMA_ROLES, VICUNA_CHAT_TEMPLATE, tiny_llava_config,
                  _clip_preprocessor("LlavaProcessor"), processor_config=_processor_config("LlavaProcessor")),
)

# LLaVA-NeXT's resolution is set by its grid pinpoints, which the model's config must match:
# min/max_pixels do not apply (fixed_resolution, the default).
LLAVA_NEXT = Family(
    name="llava_next", model_types=("llava_next",), **_PATHS,
    image_tokens=llava_next_image_tokens,
    vision_inputs=("pixel_values", "image_sizes"),
    chat_template=MISTRAL_CHAT_TEMPLATE,
    feature_cache_refusal=(
        "its anyres tiles are padded to the batch's largest tile count and packed with learned "
        "newline tokens inside get_image_features, so one image's features are not a fixed slice "
        "of the call; mmlora does not split them per image yet"
    ),
    tiny=TinySpec("tiny/llava-next", _LLAMA_TOKENS, _LLAMA_ROLES, MISTRAL_CHAT_TEMPLATE,
                  tiny_llava_next_config,
                  _clip_preprocessor("LlavaNextProcessor", aspect_ratio_setting="anyres", do_pad=True,
                                     image_grid_pinpoints=_PINPOINTS,
                                     image_processor_type="LlavaNextImageProcessor"),
                  processor_config=_processor_config("LlavaNextProcessor")),
)
