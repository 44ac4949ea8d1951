"""Weighted mixtures of data sources (data.train as a list, mmlora/config/sources.py).

How weights work: a source's weight is its relative sampling probability. An epoch is as long as
all sources' usable samples together (sum of sizes), and source i fills round(epoch x w_i / sum w)
of it (largest remainder, so the counts add up exactly). A source drawn less often than its size
gives a fresh random subset each epoch; one drawn more often repeats: every sample the same
number of times, the remainder a random subset. The draw depends only on train.seed and the
epoch, so every rank of a multi-process run, and a resumed run, sees the same epoch.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import random
from collections.abc import Sequence


def source_counts(weights: list[float], total: int) -> list[int]:
    """Samples per source in an epoch of `total`: proportional to `weights`, summing to `total`
    (largest remainder; ties go to the earlier source)."""
    scale = total / sum(weights)
    exact = [w * scale for w in weights]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def epoch_order(sizes: list[int], weights: list[float], seed: int, epoch: int) -> list[int]:
    """One epoch of indices into the concatenated sources (source 0's samples first), drawn as the
    module docstring says, in random order."""
    draw = random.Random(f"{seed}:mixture:{epoch}")
    order, offset = [], 0
    for size, count in zip(sizes, source_counts(weights, sum(sizes))):
        repeats, rest = divmod(count, size)
        order += [offset + i for i in list(range(size)) * repeats + draw.sample(range(size), rest)]
        offset += size
    draw.shuffle(order)
    return order


def combine_scans(total, parts: list):
    """Fold per-source pre-scans (`scan.SplitScan`) into `total`: lists concatenated, counts
    summed, in source order (so sample i of `total` is the i-th of the concatenated sources)."""
    for f in dataclasses.fields(total):
        if f.name in ("name", "source", "max_length", "parts", "data_source"):
            continue
        if f.name == "samples" and not all(isinstance(part.samples, list) for part in parts):
            total.samples = JoinedSamples([part.samples for part in parts])  # Arrow-backed: not copied
            continue
        for part in parts:
            value = getattr(part, f.name)
            setattr(total, f.name, getattr(total, f.name) + value)
    total.parts = list(parts)
    return total


class JoinedSamples(Sequence):
    """Sequences of samples read as one, in order, without copying them (a mixture's sources
    scanned on Arrow keep their samples on disk, scanstore.ArrowSamples)."""

    def __init__(self, parts: list):
        self.parts = parts
        self.starts = list(itertools.accumulate((len(part) for part in parts), initial=0))

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        part = bisect.bisect_right(self.starts, index) - 1
        return self.parts[part][index - self.starts[part]]
