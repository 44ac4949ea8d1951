"""Length-grouped sampling (`data.group_by_length: true`): batches of samples of similar length.

A padded batch costs as much as its longest sample times its size; with images of mixed
resolutions and answers of mixed lengths most of that can be padding. Grouping samples of
similar total length (text + visual tokens) into the same batch removes most of it.

How a training epoch is ordered (`LengthGroupedSampler`), deterministic by seed and epoch:
1. a random permutation of all samples, cut into windows of `window` global batches;
2. inside each window, samples sorted by length (ties stay in random order) and cut into global
   batches of `batch_size x num_replicas` samples of similar length;
3. all global batches shuffled, so the order of lengths over the epoch stays random.
Every sample appears exactly once per epoch. A global batch is `num_replicas` consecutive
per-device batches, which is how accelerate shards a sampler across ranks (device batch k of a
global batch goes to rank k), so every rank sees a batch of similar length at each step.

Lengths come from the pre-scan (mmlora/data/scan.py): visual tokens from image headers, text
tokens from the chat template, so grouping reads no image and runs no model.
"""

from __future__ import annotations

import random
from typing import Iterator

from torch.utils.data import Sampler

WINDOW_BATCHES = 64
"""Global batches per sorting window: large enough to find similar lengths, small enough that a
batch's samples come from a random part of the data each epoch (as transformers' own
LengthGroupedSampler does with its megabatches)."""


def group_batches(lengths: list[int], batch_size: int, seed: int, window: int = WINDOW_BATCHES) -> list[list[int]]:
    """One epoch's batches of sample indices: similar lengths within a batch, batches shuffled."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    span = batch_size * window
    for start in range(0, len(order), span):
        chunk = sorted(order[start:start + span], key=lambda i: lengths[i])  # stable: ties stay shuffled
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


class LengthGroupedSampler(Sampler[int]):
    """A torch Sampler of sample indices whose consecutive runs of `batch_size x num_replicas`
    have similar lengths (module docstring). `set_epoch` reshuffles, as accelerate calls it."""

    def __init__(self, lengths: list[int], batch_size: int, num_replicas: int = 1, seed: int = 0,
                 window: int = WINDOW_BATCHES):
        self.lengths, self.seed, self.window, self.epoch = list(lengths), seed, window, 0
        self.global_batch = batch_size * num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def batches(self) -> list[list[int]]:
        """This epoch's global batches (each split across the ranks by accelerate)."""
        return group_batches(self.lengths, self.global_batch, self.seed * 1_000_003 + self.epoch, self.window)

    def __iter__(self) -> Iterator[int]:
        for batch in self.batches():
            yield from batch

    def __len__(self) -> int:
        return len(self.lengths)


def sample_lengths(scan, processor, max_length: int) -> list[int]:
    """Tokens (text + visual) of each usable sample of a pre-scan (`scan.SplitScan`), capped
    at max_length as truncation caps them.

    The pre-scan records one length per sample it measured, including samples it then dropped
    as too long; when none was dropped those are exactly the usable samples' lengths. Otherwise
    the text is tokenised again with the visual-token counts the scan found (no image is read).
    """
    from mmlora.data.collate import tokenize_text

    if len(scan.lengths) == len(scan.samples):
        return [min(length, max_length) for length in scan.lengths]
    return [min(len(tokenize_text(processor, sample.messages, counts)[0]), max_length)
            for sample, counts in zip(scan.samples, scan.image_tokens)]


def padding_share(lengths: list[int], batches: list[list[int]]) -> float:
    """Share of the token slots of right-padded batches that hold padding."""
    slots = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)
    return 1.0 - sum(lengths[i] for batch in batches for i in batch) / slots
