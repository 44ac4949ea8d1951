"""What a training run batches with, and how many processes decode its images.

The collator: padding (mmlora/data/collate.py) or packing (mmlora/data/packing.py), as the
recipe says, wrapped so the lm_head runs only where the loss needs logits
(mmlora/training/trained_logits.py).
"""

from __future__ import annotations

from mmlora.data.collate import TrainingCollator
from mmlora.data.packing import PackingCollator
from mmlora.models.processor import ImageTextProcessor
from mmlora.training.trained_logits import TrainedLogitsOnly


def training_collator(processor: ImageTextProcessor, recipe, model):
    """What train.py batches with: PackingCollator when data.packing is on (mask format from the
    model's attention kernel, eager's mask in the model's dtype), else the padding collator;
    wrapped so the lm_head only runs where the loss needs logits (mmlora/training/trained_logits.py),
    except with Liger, whose fused linear cross-entropy never materialises logits anyway."""
    if recipe.data.packing:
        collator = PackingCollator(processor, model.config._attn_implementation, next(model.parameters()).dtype)
    else:
        collator = TrainingCollator(processor)
    return collator if recipe.train.liger else TrainedLogitsOnly(collator)


def dataloader_workers(requested: int, device: str) -> int:
    """train.num_workers: -1 (auto) decodes images in 4 worker processes on a GPU machine (at
    most one per spare CPU), so batches are ready before the GPU asks; on CPU the model's own
    threads use every core and workers would only compete with them."""
    import os

    if requested >= 0:
        return requested
    return min(4, (os.cpu_count() or 1) - 1) if device == "cuda" else 0
