"""Multimodal packing (`data.packing: true`): several samples share one row, each as if alone.

Why the result equals training unpacked:
- Each sample keeps the position ids it would have alone. Qwen-VL models get their 3-D mRoPE
  positions computed per sample from that sample's own image grids (`mrope_positions`, the rule
  of the model's `get_rope_index`), plus a text row 0..n-1 in front (the 4-row layout Qwen-VL's
  forward accepts for packed input); other families get 0..n-1 per sample.
- Attention cannot cross samples: SDPA/eager get a block-diagonal causal 4-D mask (boolean for
  SDPA, additive for eager), which transformers uses as given. flash-attention 2 takes no mask:
  its varlen kernel reads the sample boundaries from the position ids restarting at 0
  (transformers' padding-free path, one row per batch).
- Each sample's first token has label -100, so no token predicts across a boundary and the
  trained tokens are exactly those of the unpacked batch: the per-token loss (sum over trained
  tokens / their count) is the same. The DataLoader still yields `train.batch_size` samples per
  step; packing changes the rows they sit in, never which samples make a step.

Row capacity: under a dense mask attention costs row_length^2 per row, so rows are filled up to
the longest sample of the batch (the width the padded batch would have had) and never beyond:
packing only removes padding, it never adds attention work. With flash-attention 2 the cost is
per sample, so the whole batch goes in one row with no padding at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mmlora.data.collate import IGNORE_INDEX, TrainExample
from mmlora.errors import MmloraError
from mmlora.models.processor import ImageTextProcessor, stack_vision

VARLEN = "flash_attention_2"


def plan_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Sample indices per row: first-fit decreasing into rows of at most `capacity` tokens.

    Deterministic (ties broken by index); a sample longer than `capacity` gets a row of its own.
    """
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for r, free in enumerate(room):
            if lengths[index] <= free:
                rows[r].append(index)
                room[r] -= lengths[index]
                break
        else:
            rows.append([index])
            room.append(capacity - lengths[index])
    return rows


def mrope_positions(mm_token_types: list[int], image_grid_thw, merge_size: int):
    """The (3, n) mRoPE positions of one sample alone, as Qwen-VL's `get_rope_index` computes them.

    Runs of text tokens advance all three axes by one per token; a run of image tokens takes the
    next grid (t, h, w), gets positions start + (t, h, w index) after the spatial merge, and
    advances the start by max(h, w) / merge_size.
    """
    import torch

    grids = iter(image_grid_thw.tolist() if image_grid_thw is not None else [])
    pieces, start, i, n = [], 0, 0, len(mm_token_types)
    while i < n:
        j = i
        while j < n and mm_token_types[j] == mm_token_types[i]:
            j += 1
        if mm_token_types[i] == 0:
            pieces.append(torch.arange(start, start + j - i).expand(3, -1))
            start += j - i
        else:
            t, h, w = next(grids)
            h, w = h // merge_size, w // merge_size
            grid = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
            pieces.append(torch.stack(grid).reshape(3, -1) + start)
            start += max(h, w)
        i = j
    return torch.cat(pieces, dim=1) if pieces else torch.zeros(3, 0, dtype=torch.long)


def _uses_mrope(processor: ImageTextProcessor) -> bool:
    # Qwen-VL families place 3-D positions from image_grid_thw (see families/qwen.py).
    return "image_grid_thw" in processor.family.vision_inputs


def check_packable(processor: ImageTextProcessor) -> None:
    """Refuse families whose attention is not plain causal (Gemma 3 / PaliGemma take
    token_type_ids for bidirectional image or prefix attention, which a causal block mask drops)."""
    import torch

    probe = torch.ones(1, 2, dtype=torch.long)
    extra = set(processor.text_inputs(probe, probe, probe)) - {"mm_token_type_ids"}
    if extra:
        raise MmloraError(
            f"data.packing is not supported for {processor.family.name}: its forward takes "
            f"{', '.join(sorted(extra))} (non-causal attention inside images or the prompt), which "
            "a packed causal mask would drop. Set data.packing=false (data.group_by_length=true "
            "also cuts padding)."
        )


def block_causal_mask(segments, dtype=None):
    """(rows, 1, L, L) mask: token q sees token k iff both are in the same segment and k <= q.

    Boolean (True = attend) for SDPA; with a float `dtype`, additive (0 / dtype's minimum) for
    eager attention, which adds the mask to the scores.
    """
    import torch

    width = segments.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    mask = (segments[:, :, None] == segments[:, None, :]) & causal
    mask = mask[:, None]
    if dtype is None:
        return mask
    return torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)


@dataclass
class PackingCollator:
    """Packs a batch of encoded examples into as few rows as the capacity allows (module docstring).

    `attn_implementation` is the model's (sdpa, eager or flash_attention_2): it decides the mask
    format and the row capacity. `mask_dtype`: the model's float dtype, for eager's additive mask.
    """

    processor: ImageTextProcessor
    attn_implementation: str = "sdpa"
    mask_dtype: Any = None

    def __post_init__(self):
        check_packable(self.processor)

    def __call__(self, examples: list[TrainExample]) -> dict:
        import torch

        lengths = [len(e.input_ids) for e in examples]
        varlen = self.attn_implementation == VARLEN
        rows = [list(range(len(examples)))] if varlen else plan_rows(lengths, max(lengths))
        input_ids, labels, segments, positions = self._fill(examples, rows, lengths)
        # use_cache=False: no KV cache in training; transformers also only reads packed position
        # ids as sample boundaries (SDPA without a mask) when no cache is passed.
        batch = {"input_ids": input_ids, "labels": labels, "use_cache": False, "position_ids": positions,
                 **self.processor.text_inputs(input_ids, (segments >= 0).long(), labels)}
        if not varlen:
            eager = self.attn_implementation == "eager"
            batch["attention_mask"] = block_causal_mask(segments, (self.mask_dtype or torch.float32) if eager else None)
        order = [i for row in rows for i in row]  # image features fill image tokens row by row
        batch.update(stack_vision([examples[i].vision_inputs for i in order if examples[i].vision_inputs]))
        return batch

    def _fill(self, examples, rows, lengths):
        """Token ids, labels, segment ids (-1: padding) and position ids of the packed rows."""
        import torch

        shape = (len(rows), max(sum(lengths[i] for i in row) for row in rows))
        input_ids = torch.full(shape, self.processor.pad_token_id, dtype=torch.long)
        labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
        segments = torch.full(shape, -1, dtype=torch.long)
        text = torch.zeros(shape, dtype=torch.long)
        mrope = torch.zeros(3, *shape, dtype=torch.long) if _uses_mrope(self.processor) else None
        image_id, merge = self.processor.image_token_id, self.processor.family.merge_size
        for r, row in enumerate(rows):
            start = 0
            for index in row:
                example, end = examples[index], start + lengths[index]
                input_ids[r, start:end] = torch.tensor(example.input_ids)
                labels[r, start:end] = torch.tensor(example.labels)
                labels[r, start] = IGNORE_INDEX  # predicted from the previous sample: never trained
                segments[r, start:end] = index
                text[r, start:end] = torch.arange(lengths[index])
                if mrope is not None:
                    types = [int(t == image_id) for t in example.input_ids]
                    mrope[:, r, start:end] = mrope_positions(types, example.vision_inputs.get("image_grid_thw"), merge)
                start = end
            text[r, start:] = torch.arange(shape[1] - start)  # padding restarts at 0: a segment of its own
            if mrope is not None:
                mrope[:, r, start:] = text[r, start:]
        positions = text if mrope is None else torch.cat([text[None], mrope])  # Qwen-VL: text row first
        return input_ids, labels, segments, positions
