"""Chat samples -> model inputs: labels on assistant answers only, lengths that never cut an
image, right padding for training, left padding for generation.

The trained spans come from the family's own chat template: for assistant turn i, the text of
turns[:i] rendered with the generation prompt is a prefix of the text of turns[:i+1]; what lies
between the two, up to and including the turn-end token, is the answer. No token id of any one
model is hard-coded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mmlora.data.images import load_image
from mmlora.data.samples import RowError, Sample
from mmlora.errors import MmloraError
from mmlora.models.processor import Encoded, ImageTextProcessor, stack_vision

IGNORE_INDEX = -100


@dataclass
class TrainExample:
    input_ids: list[int]
    labels: list[int]
    pixel_values: Any
    image_grid_thw: Any
    vision_inputs: dict = field(default_factory=dict)
    """Every per-sample vision tensor the family's forward takes (processor.Encoded)."""


def assistant_char_spans(processor: ImageTextProcessor, messages: list[dict], counts: list[int]) -> list[tuple[int, int]]:
    """Character spans of every assistant answer (with its turn-end token) in the expanded text."""
    turn_end = processor.family.turn_end
    full = processor.render_expanded(messages, counts)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = processor.render_expanded(messages[:i], counts, add_generation_prompt=True)
        through = processor.render_expanded(messages[: i + 1], counts)
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


def answer_labels(processor: ImageTextProcessor, messages: list[dict], counts: list[int],
                  input_ids: list[int], offsets: list[tuple[int, int]], train_on: str = "all_turns") -> list[int]:
    """Labels for tokenised `messages`: the token id inside trained answers, -100 elsewhere.

    train_on="last_turn" trains only the final answer. A token is trained when it starts inside
    an answer span; answers start right after the template's role header (a pre-tokenizer
    boundary), so no token straddles a span edge. Image tokens are never trained.
    """
    spans = assistant_char_spans(processor, messages, counts)
    if train_on == "last_turn":
        spans = spans[-1:]
    image_id = processor.image_token_id
    if len(spans) == 1:  # the common case, written out (the pre-scan labels every sample)
        (a, b), = spans
        return [token if token != image_id and a <= start < b else IGNORE_INDEX
                for token, (start, _end) in zip(input_ids, offsets)]
    # Several answers: the characters inside any of them marked once, then one lookup per token
    # (the same test as `any(a <= start < b for a, b in spans)`, without a generator per token).
    inside = bytearray(max((b for _a, b in spans), default=0))
    for a, b in spans:
        inside[a:b] = b"\x01" * (b - a)
    limit = len(inside)
    return [token if token != image_id and start < limit and inside[start] else IGNORE_INDEX
            for token, (start, _end) in zip(input_ids, offsets)]


def tokenize_text(processor: ImageTextProcessor, messages: list[dict], counts: list[int]) -> tuple[list[int], list]:
    """Token ids and offsets of the rendered chat with image k expanded to counts[k] tokens,
    without any pixels: what the pre-scan uses to measure a sample before training."""
    tokens = processor.tokenize(processor.render_expanded(messages, counts))
    return tokens.input_ids, tokens.offsets


def image_tokens_end(processor: ImageTextProcessor, messages: list[dict], counts: list[int],
                     offsets: list[tuple[int, int]]) -> int:
    """How many leading tokens hold every image: through the last image's expansion, plus one
    token for the template's image-end marker (e.g. <|vision_end|>); 0 without images.

    Works on the family's own expansion text (tiles, markers), not on one token id.
    """
    placeholder = processor.family.image_token
    pieces = processor.render(messages).split(placeholder)
    if len(pieces) == 1:
        return 0
    end = len(pieces[0])
    for k in range(len(pieces) - 1):
        end += len(getattr(counts[k], "text", placeholder * counts[k]))
        if k < len(pieces) - 2:
            end += len(pieces[k + 1])
    after = next((i for i, (start, _end) in enumerate(offsets) if start >= end), len(offsets))
    return min(after + 1, len(offsets))


def fit_length(input_ids: list[int], labels: list[int], max_length: int, truncate: bool,
               keep: int) -> tuple[list[int], list[int]] | None:
    """The sample within max_length tokens, or None when it must be dropped.

    Truncation keeps the first max_length tokens only when that keeps the first `keep` tokens
    (every image, see `image_tokens_end`) and at least one answer token: an image is never cut,
    so the model never sees fewer image tokens than the vision tower gives features.
    """
    if len(input_ids) <= max_length:
        return input_ids, labels
    if not truncate or keep > max_length:
        return None
    kept = labels[:max_length]
    if all(label == IGNORE_INDEX for label in kept):
        return None
    return input_ids[:max_length], kept


def encode_for_training(processor: ImageTextProcessor, sample: Sample, max_length: int,
                        train_on: str = "all_turns", truncate: bool = False,
                        expected_counts: list[int] | None = None) -> TrainExample:
    """Tokenise one sample with its images; labels are -100 except on assistant answers.

    `expected_counts` are the visual-token counts the pre-scan predicted from the image headers;
    a difference means the scan and the processor disagree, which is reported, never trained on.
    """
    images = [load_image(image, sample.source) for image in sample.images]
    # A mixture's source may set its own resolution (Sample.pixel_bounds): resize within it.
    encoded = processor.at_bounds(sample.pixel_bounds).encode(processor.render(sample.messages), images)
    if expected_counts is not None and list(encoded.image_token_counts) != list(expected_counts):
        raise MmloraError(
            f"{sample.source}: the processor made {encoded.image_token_counts} visual tokens where the "
            f"pre-scan predicted {expected_counts}; the image changed after the scan, or the scan's "
            "resize rule does not match this processor."
        )
    labels = answer_labels(processor, sample.messages, encoded.image_token_counts,
                           encoded.input_ids, encoded.offsets, train_on)
    keep = image_tokens_end(processor, sample.messages, encoded.image_token_counts, encoded.offsets)
    fitted = fit_length(encoded.input_ids, labels, max_length, truncate, keep)
    if fitted is None:  # a RowError, so that data.streaming counts it as a dropped sample
        raise RowError(
            "too_long", f"sample is {len(encoded.input_ids)} tokens (with visual tokens), more "
            f"than data.max_length={max_length}, and cannot be cut without cutting an image. Raise "
            "data.max_length or lower model.max_pixels (the training pre-scan drops such samples).", sample.source
        )
    input_ids, labels = fitted
    return TrainExample(input_ids, labels, encoded.pixel_values, encoded.image_grid_thw, encoded.vision_inputs)


def _stack_vision(examples) -> dict:
    # The family decides which tensors (processor.Encoded.vision_inputs); processor.stack_vision pads them.
    return stack_vision([e.vision_inputs for e in examples if e.vision_inputs])


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


def _batch(processor: ImageTextProcessor, ids: list[list[int]], side: str, labels=None) -> dict:
    input_ids = pad_batch(ids, processor.pad_token_id, side)
    attention_mask = pad_batch([[1] * len(r) for r in ids], 0, side)
    # Per-token inputs of the family (Qwen-VL: mm_token_type_ids; Gemma 3 / PaliGemma: token_type_ids).
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            **processor.text_inputs(input_ids, attention_mask, labels)}


@dataclass
class TrainingCollator:
    """Pads encoded examples on the right into one batch (labels padded with -100)."""

    processor: ImageTextProcessor

    def __call__(self, examples: list[TrainExample]) -> dict:
        labels = pad_batch([e.labels for e in examples], IGNORE_INDEX, "right")
        batch = _batch(self.processor, [e.input_ids for e in examples], "right", labels)
        batch["labels"] = labels
        batch.update(_stack_vision(examples))
        return batch


def prompt_messages(sample: Sample) -> list[dict]:
    """The turns a model answers: everything before the final answer."""
    return sample.messages[:-1] if sample.messages[-1]["role"] == "assistant" else sample.messages


def encode_prompt(processor: ImageTextProcessor, sample: Sample) -> Encoded:
    """The prompt of `sample` (all turns before the final answer, then the generation prompt)
    encoded as generation takes it, images processed: its `input_ids` are the prompt's tokens,
    visual tokens included. Encode once and pass it to `left_padded_batch`."""
    images = [load_image(image, sample.source) for image in sample.images]
    text = processor.render(prompt_messages(sample), add_generation_prompt=True)
    return processor.at_bounds(sample.pixel_bounds).encode(text, images)


def left_padded_batch(processor: ImageTextProcessor, prompts: list[Encoded]) -> dict:
    """Encoded prompts padded on the left for batched generation.

    Left padding keeps every prompt's last token at the same position, where generation
    appends; right padding would make shorter prompts continue after pad tokens.
    """
    batch = _batch(processor, [e.input_ids for e in prompts], "left")
    batch.update(_stack_vision(prompts))
    return batch


def generation_batch(processor: ImageTextProcessor, samples: list[Sample]) -> dict:
    """Prompts (all turns before the final answer) encoded and padded on the left for batched
    generation (`encode_prompt`, then `left_padded_batch`)."""
    return left_padded_batch(processor, [encode_prompt(processor, sample) for sample in samples])
