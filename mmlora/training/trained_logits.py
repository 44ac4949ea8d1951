"""Logits only where the loss needs them: the lm_head runs on trained positions alone.

mmlora trains on answer tokens only (mmlora/data/collate.py), often a few percent of a VQA sample's tokens,
yet a causal LM computes logits for every position: batch x length x vocabulary values, upcast
to fp32 for the loss (about 12 bytes each with the log-softmax and its gradients: gigabytes
for Qwen2-VL's 152k-word vocabulary), plus 4 x hidden x vocabulary FLOPs per token forward and
backward. Positions whose next token is not trained contribute nothing to the loss or to any
gradient, so computing their logits is pure waste.

`TrainedLogitsOnly` wraps a collator and adds two inputs every transformers VLM forward takes:
`logits_to_keep`, a boolean (rows, length) mask of the positions whose next label is trained
(the lm_head then projects only those hidden states), and `shift_labels`, those next labels
in the same order, which the causal-LM loss uses as they are instead of shifting `labels`.
The loss is the same sum over the same trained tokens, normalised by the same count (the
Trainer counts `shift_labels` when a batch carries them), so the gradients are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mmlora.data.collate import IGNORE_INDEX


def trained_positions(labels):
    """(keep, shift_labels): keep[b, t] is True where labels[b, t + 1] is trained."""
    import torch

    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep, labels[:, 1:][keep[:, :-1]]


@dataclass
class TrainedLogitsOnly:
    """A collator whose batches ask the model for logits at trained positions only."""

    collator: Any

    def __call__(self, examples) -> dict:
        batch = self.collator(examples)
        keep, shift_labels = trained_positions(batch["labels"])
        batch["logits_to_keep"], batch["shift_labels"] = keep, shift_labels
        return batch
