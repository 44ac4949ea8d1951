"""Gemma 3 and PaliGemma: a SigLIP tower (fixed resolution), a projector, a Gemma decoder.

Gemma 3's template writes <start_of_image>; the processor turns it into
"\\n\\n<start_of_image>" + mm_tokens_per_image x <image_soft_token> + "<end_of_image>\\n\\n", and
the forward takes `token_type_ids` (1 on image tokens) to attend bidirectionally within an image.

PaliGemma is a prefix-LM with no chat template: "<image>... <bos>prefix\\n" is the prompt and
"suffix<eos>" the answer. mmlora renders one user turn as the prefix and the assistant turn as
the suffix (`PALIGEMMA_CHAT_TEMPLATE`), trains up to and including <eos>, and passes
`token_type_ids` (0 prefix, 1 suffix) so the prefix attends bidirectionally as in pre-training.
"""

from __future__ import annotations

from mmlora.models.families.base import (Family, ImageTokens, TinySpec, repeated, tiny_text_config,
                                         tiny_vision_config)
from mmlora.models.families.features import BATCH_STACKED

BOI, EOI, SOFT = "<start_of_image>", "<end_of_image>", "<image_soft_token>"

# Gemma 3 instruct's chat template (the format, restated): a system message is prefixed to the
# first user turn; the assistant's role is "model"; every turn ends with <end_of_turn>.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{% if messages[0]['content'] is string %}{% set first_user_prefix = messages[0]['content'] + '\n\n' %}"
    "{% else %}{% set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' %}{% endif %}"
    "{% set loop_messages = messages[1:] %}"
    "{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for item in message['content'] %}{% if item['type'] == 'image' %}<start_of_image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

# PaliGemma: images first, then <bos>, the prompt and "\n"; the answer and <eos> follow.
PALIGEMMA_CHAT_TEMPLATE = (
    "{% if messages | selectattr('role', 'equalto', 'system') | list %}"
    "{{ raise_exception('PaliGemma has no system prompt: leave data.system_prompt unset.') }}{% endif %}"
    "{% if messages | selectattr('role', 'equalto', 'user') | list | length > 1 %}"
    "{{ raise_exception('PaliGemma takes one prompt and one answer per sample, not a multi-turn chat.') }}"
    "{% endif %}"
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "{% if message['content'] is not string %}{% for part in message['content'] "
    "if part['type'] == 'image' %}<image>{% endfor %}{% endif %}{{ bos_token }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] "
    "if part['type'] == 'text' %}{{ part['text'] }}{% endfor %}{% endif %}{{ '\\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] "
    "if part['type'] == 'text' %}{{ part['text'] }}{% endfor %}{% endif %}{{ eos_token }}"
    "{% endif %}{% endfor %}"
)


def gemma3_image_tokens(image_processor, config, vision: dict, k: int):
    """mm_tokens_per_image soft tokens between begin/end markers (and pan-and-scan crops if on)."""
    count = config.mm_tokens_per_image
    one = f"\n\n{BOI}" + SOFT * count + f"{EOI}\n\n"
    crops = int(vision["num_crops"][k]) if "num_crops" in vision else 0
    if not crops:
        return ImageTokens(count, one)
    text = f"Here is the original image {one} and here are some crops to help you see better " + " ".join([one] * crops)
    return ImageTokens(count * (crops + 1), text)


def paligemma_image_tokens(image_processor, config, vision: dict, k: int):
    """One <image> per SigLIP patch (no class token): 256 at 224 px."""
    height, width = vision["pixel_values"][k].shape[-2:]
    patch = config.vision_config.patch_size
    return repeated("<image>", (height // patch) * (width // patch))


def image_token_types(input_ids, attention_mask, labels, visual_token_id) -> dict:
    """Gemma 3: 1 on image tokens (bidirectional attention within each image)."""
    return {"token_type_ids": (input_ids == visual_token_id).long()}


def prefix_suffix_types(input_ids, attention_mask, labels, visual_token_id) -> dict:
    """PaliGemma: 0 on the prefix (bidirectional), 1 on the trained suffix. A generation prompt
    is all prefix; generated tokens are marked 1 by the model itself."""
    import torch

    if labels is None:
        return {"token_type_ids": torch.zeros_like(input_ids)}
    return {"token_type_ids": (labels != -100).long()}


def _gemma_text(model_type: str, token_id, vocab_size: int, **extra) -> dict:
    return tiny_text_config(model_type, vocab_size, token_id("<bos>"), token_id("<eos>"), token_id("<pad>"),
                            head_dim=16, **extra)


def _siglip(**extra) -> dict:
    """SigLIP tower: 2 layers, 56-px images, 14-px patches (16 patches), no pooling head."""
    return tiny_vision_config("siglip_vision_model", vision_use_head=False, **extra)


def tiny_gemma3_config(token_id, vocab_size: int) -> dict:
    return {
        "architectures": ["Gemma3ForConditionalGeneration"],
        "model_type": "gemma3",
        "mm_tokens_per_image": 4,
        "boi_token_index": token_id(BOI),
        "eoi_token_index": token_id(EOI),
        "image_token_index": token_id(SOFT),
        "tie_word_embeddings": True,
        "text_config": _gemma_text(
            "gemma3_text", token_id, vocab_size, num_key_value_heads=2, query_pre_attn_scalar=16,
            sliding_window=64, layer_types=["sliding_attention", "full_attention"],
        ),
        "vision_config": _siglip(),
    }


def tiny_paligemma_config(token_id, vocab_size: int) -> dict:
    return {
        "architectures": ["PaliGemmaForConditionalGeneration"],
        "model_type": "paligemma",
        "image_token_index": token_id("<image>"),
        "projection_dim": 64,
        "hidden_size": 64,
        "tie_word_embeddings": True,
        "text_config": _gemma_text("gemma", token_id, vocab_size, num_key_value_heads=1),
        "vision_config": _siglip(projection_dim=64, num_image_tokens=16),
    }


_RESCALE = 1 / 255


def _gemma3_preprocessor(image_seq_length: int) -> dict:
    """gemma-3-4b-it's layout (pan-and-scan options left null), the twin's 56-px images."""
    return {"do_convert_rgb": None, "do_normalize": True, "do_pan_and_scan": None, "do_rescale": True,
            "do_resize": True, "image_mean": [0.5] * 3, "image_processor_type": "Gemma3ImageProcessor",
            "image_seq_length": image_seq_length, "image_std": [0.5] * 3, "pan_and_scan_max_num_crops": None,
            "pan_and_scan_min_crop_size": None, "pan_and_scan_min_ratio_to_activate": None,
            "processor_class": "Gemma3Processor", "resample": 2, "rescale_factor": _RESCALE,
            "size": {"height": 56, "width": 56}}


def _paligemma_preprocessor(image_seq_length: int) -> dict:
    """paligemma-3b-pt-224's layout (no processor_config.json: image_seq_length lives here)."""
    return {"do_convert_rgb": None, "do_normalize": True, "do_rescale": True, "do_resize": True,
            "image_mean": [0.5] * 3, "image_processor_type": "SiglipImageProcessor",
            "image_seq_length": image_seq_length, "image_std": [0.5] * 3, "processor_class": "PaliGemmaProcessor",
            "resample": 3, "rescale_factor": _RESCALE, "size": {"height": 56, "width": 56}}


_GEMMA_ROLES = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}
_PATHS = dict(vision_tower="model.vision_tower", projector=("model.multi_modal_projector",),
              language_model="model.language_model")

# Gemma 3's projector is a norm and a bare weight matrix (no nn.Linear): lora.projector=lora is
# refused for it, full trains it.
GEMMA3 = Family(
    name="gemma3", model_types=("gemma3",), **_PATHS,
    image_token=BOI,
    visual_token=SOFT,
    turn_end="<end_of_turn>",
    image_tokens=gemma3_image_tokens,
    text_inputs=image_token_types,
    feature_layout=BATCH_STACKED,
    tiny=TinySpec(
        "tiny/gemma3",
        ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", BOI, EOI, SOFT),
        _GEMMA_ROLES, GEMMA3_CHAT_TEMPLATE, tiny_gemma3_config, _gemma3_preprocessor(4),
        named_tokens={"boi_token": BOI, "eoi_token": EOI, "image_token": SOFT},
        processor_config={"image_seq_length": 4, "processor_class": "Gemma3Processor"},
    ),
)

PALIGEMMA = Family(
    name="paligemma", model_types=("paligemma",), **_PATHS,
    image_token="<image>",
    turn_end="<eos>",
    image_tokens=paligemma_image_tokens,
    text_inputs=prefix_suffix_types,
    feature_layout=BATCH_STACKED,
    chat_template=PALIGEMMA_CHAT_TEMPLATE,
    tiny=TinySpec(
        "tiny/paligemma", ("<pad>", "<eos>", "<bos>", "<unk>", "<image>"), _GEMMA_ROLES,
        PALIGEMMA_CHAT_TEMPLATE, tiny_paligemma_config, _paligemma_preprocessor(16),
        named_tokens={"image_token": "<image>"},
    ),
)
