"""Weighted mixtures of data sources (data.train as a list, mmlora/config/sources.py).

How weights work: a source's weight is its relative sampling probability. An epoch is as long as
all sources' usable samples together (sum of sizes), and source i fills round(epoch x w_i / sum w)
of it (largest remainder, so the counts add up exactly). A source drawn less often than its size
gives a fresh random subset each epoch; one drawn more often repeats: every sample the same
number of times, the remainder a random subset. The draw depends only on train.seed and the
epoch, so every rank of a multi-process run, and a resumed run, sees the same epoch.
"""

from __future__ import annotations

import dataclasses
import random


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
        for part in parts:
            value = getattr(part, f.name)
            setattr(total, f.name, getattr(total, f.name) + value)
    total.parts = list(parts)
    return total
