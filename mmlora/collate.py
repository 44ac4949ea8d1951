"""Chat samples -> model inputs: labels on assistant answers only, right padding for training,
left padding for generation.

The trained spans come from the family's own chat template: for assistant turn i, the text of
turns[:i] rendered with the generation prompt is a prefix of the text of turns[:i+1]; what lies
between the two, up to and including the turn-end token, is the answer. No token id of any one
model is hard-coded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mmlora.data import Sample, load_image
from mmlora.errors import MmloraError
from mmlora.processor import ImageTextProcessor, expand_placeholders

IGNORE_INDEX = -100


@dataclass
class TrainExample:
    input_ids: list[int]
    labels: list[int]
    pixel_values: Any
    image_grid_thw: Any


def assistant_char_spans(processor: ImageTextProcessor, messages: list[dict], counts: list[int]) -> list[tuple[int, int]]:
    """Character spans of every assistant answer (with its turn-end token) in the expanded text."""
    placeholder, turn_end = processor.family.image_token, processor.family.turn_end
    full = expand_placeholders(processor.render(messages), placeholder, counts)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = expand_placeholders(processor.render(messages[:i], add_generation_prompt=True), placeholder, counts)
        through = expand_placeholders(processor.render(messages[: i + 1]), placeholder, counts)
        if not (through.startswith(prompt) and full.startswith(through)):
            raise MmloraError(
                "The chat template does not render conversations turn by turn (a prefix changed "
                "when a turn was added), so answer tokens cannot be located for the loss mask."
            )
        end = through.find(turn_end, len(prompt))
        if end < 0:
            raise MmloraError(f"The chat template did not close the assistant turn with {turn_end!r}.")
        spans.append((len(prompt), end + len(turn_end)))
    return spans


def encode_for_training(processor: ImageTextProcessor, sample: Sample, max_length: int) -> TrainExample:
    """Tokenise one sample; labels are -100 except on assistant answers and their end tokens."""
    images = [load_image(image, sample.source) for image in sample.images]
    encoded = processor.encode(processor.render(sample.messages), images)
    spans = assistant_char_spans(processor, sample.messages, encoded.image_token_counts)
    labels = []
    for token_id, (start, _end) in zip(encoded.input_ids, encoded.offsets):
        # A token is trained when it starts inside an answer span. Answer spans start right
        # after the template's "assistant\n", a pre-tokenizer boundary, so no token straddles.
        inside = any(a <= start < b for a, b in spans)
        labels.append(token_id if inside else IGNORE_INDEX)
    if len(encoded.input_ids) > max_length:
        raise MmloraError(
            f"{sample.source}: sample is {len(encoded.input_ids)} tokens (with visual tokens), more "
            f"than data.max_length={max_length}. Raise data.max_length or lower model.max_pixels."
        )
    return TrainExample(encoded.input_ids, labels, encoded.pixel_values, encoded.image_grid_thw)


def _stack_vision(examples) -> dict:
    import torch

    with_images = [e for e in examples if e.pixel_values is not None]
    if not with_images:
        return {}
    return {
        "pixel_values": torch.cat([e.pixel_values for e in with_images]),
        "image_grid_thw": torch.cat([e.image_grid_thw for e in with_images]),
    }


def pad_batch(rows: list[list[int]], pad_value: int, side: str):
    import torch

    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), pad_value, dtype=torch.long)
    for i, row in enumerate(rows):
        if side == "right":
            out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        else:
            out[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
    return out


def _batch(processor: ImageTextProcessor, ids: list[list[int]], side: str) -> dict:
    input_ids = pad_batch(ids, processor.pad_token_id, side)
    attention_mask = pad_batch([[1] * len(r) for r in ids], 0, side)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        # Qwen2-VL's forward needs the modality of every token to place 3-D mRoPE positions.
        "mm_token_type_ids": (input_ids == processor.image_token_id).long() * attention_mask,
    }


@dataclass
class TrainingCollator:
    """Pads encoded examples on the right into one batch (labels padded with -100)."""

    processor: ImageTextProcessor

    def __call__(self, examples: list[TrainExample]) -> dict:
        batch = _batch(self.processor, [e.input_ids for e in examples], "right")
        batch["labels"] = pad_batch([e.labels for e in examples], IGNORE_INDEX, "right")
        batch.update(_stack_vision(examples))
        return batch


def generation_batch(processor: ImageTextProcessor, samples: list[Sample]) -> dict:
    """Prompts (all turns before the final answer) padded on the left for batched generation.

    Left padding keeps every prompt's last token at the same position, where generation
    appends; right padding would make shorter prompts continue after pad tokens.
    """
    encoded = []
    for sample in samples:
        prompt_messages = sample.messages[:-1] if sample.messages[-1]["role"] == "assistant" else sample.messages
        images = [load_image(image, sample.source) for image in sample.images]
        text = processor.render(prompt_messages, add_generation_prompt=True)
        encoded.append(processor.encode(text, images))
    batch = _batch(processor, [e.input_ids for e in encoded], "left")
    batch.update(_stack_vision(encoded))
    return batch
