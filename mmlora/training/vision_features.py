"""train.vision_cache for a training run: decide, open the store, install it, report it.

auto turns the cache on when an image's features will be needed more than once (more than one
pass over the training data, or evaluation images used at several points) and the model allows
it (models/vision_cache.py: frozen tower and projector, no dropout, a family whose features
split per image). Multi-process runs: each rank keeps its own RAM part and all ranks share the
disk folder (entries are written atomically under their final name). Sharded towers (DeepSpeed
ZeRO-3, FSDP) are left uncached: every rank must run the tower at every step to gather its weights.
"""

from __future__ import annotations

import logging

from mmlora.config.schema import Recipe
from mmlora.models.vision_cache import install_vision_cache, open_recipe_store, why_not_cacheable
from mmlora.models.vision_entries import vision_cache_note
from mmlora.models.vision_store import FeatureStore
from mmlora.training.ranks import is_main_process

log = logging.getLogger(__name__)


def training_images_repeat(recipe: Recipe, train_samples: int, world: int = 1) -> str | None:
    """Why training images will be seen more than once in this run, or None."""
    t = recipe.train
    per_step = t.batch_size * t.grad_accum * world
    if t.max_steps > 0 and t.max_steps * per_step > train_samples:
        return f"train.max_steps={t.max_steps} runs more than one pass over the {train_samples} training samples"
    if t.max_steps <= 0 and t.epochs > 1:
        return f"train.epochs={t.epochs:g}"
    return None


def evaluation_images_repeat(recipe: Recipe) -> str | None:
    """Why evaluation images will be used at more than one evaluation of this run, or None."""
    t = recipe.train
    if recipe.data.eval and t.eval_strategy != "never" and (recipe.eval.generate_at_end or t.eval_strategy == "steps"):
        return "the evaluation images are used at several evaluations"
    if recipe.data.eval and recipe.eval.generate_steps > 0:
        return "the evaluation images are used at every eval.generate_steps"
    return None


def sharded_tower(trainer) -> str | None:
    """Why the tower must run on every rank at every step (sharded weights), or None."""
    if getattr(trainer, "is_fsdp_enabled", False):
        return "FSDP shards the vision tower: every rank must run it each step to gather its weights"
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None) if trainer.is_deepspeed_enabled else None
    if plugin is not None and plugin.zero_stage == 3:
        return "DeepSpeed ZeRO-3 shards the vision tower: every rank must run it each step to gather its weights"
    return None


def attach_training_cache(trainer, family, recipe: Recipe, train_samples: int | None, world: int = 1) -> FeatureStore | None:
    """Install the vision-feature cache on the trainer's model when train.vision_cache says so.

    Prints one line saying whether it is on and why (or why not); returns the store or None
    (give it to `report_training_cache` at the end of the run)."""
    if recipe.train.vision_cache == "off":
        return None
    # A stream (data.streaming, train_samples None) has no known size: its training features are
    # not cached, as the cache would grow with the stream; evaluation still may be.
    train_repeat = None if train_samples is None else training_images_repeat(recipe, train_samples, world)
    repeat = train_repeat or evaluation_images_repeat(recipe)
    refusal = sharded_tower(trainer) or why_not_cacheable(trainer.model, family)
    if repeat is None or refusal is not None:
        once = ("a streamed training set (data.streaming) is not cached" if train_samples is None
                else "each image is seen once in this run")
        if is_main_process():
            print(f"vision cache: off ({refusal or once})")
        return None
    store = open_recipe_store(trainer.model, family, recipe)
    # Training images seen once: caching them would only fill the disk, so the training steps
    # (the model in train mode) compute their features as usual and only evaluation is cached.
    install_vision_cache(trainer.model, family, store, in_training=train_repeat is not None)
    if is_main_process():
        scope = "" if train_repeat else " for evaluation only"
        print(f"vision cache: on{scope} ({repeat}); entries in {store.directory}")
    return store


COUNTS = ("entries", "hits_ram", "hits_disk", "rejected", "ram_bytes", "disk_bytes")
"""The StoreStats fields the end-of-run line reports (summed over the processes of a run)."""


def run_counts(store: FeatureStore, accelerator=None, world: int = 1) -> dict[str, int]:
    """This run's cache counts; with `world` > 1, summed over every process (a collective: every
    rank must call it, on the success path only, while the process group is up)."""
    counts = {name: int(getattr(store.stats, name)) for name in COUNTS}
    if world > 1:
        import torch
        import torch.distributed as dist

        total = torch.tensor(list(counts.values()), dtype=torch.int64, device=accelerator.device)
        dist.all_reduce(total)  # sum; one tiny tensor on the Trainer's group (gloo or NCCL)
        counts = dict(zip(COUNTS, total.tolist()))
    return counts


def describe_counts(counts: dict[str, int], world: int = 1) -> str:
    over = f" over {world} processes" if world > 1 else ""
    return (f"vision cache{over}: {counts['entries']} images encoded, {counts['hits_ram'] + counts['hits_disk']} "
            f"reused ({counts['hits_disk']} from disk), {counts['rejected']} bad entries recomputed; "
            f"{counts['ram_bytes'] / 2**20:.1f} MiB in RAM, {counts['disk_bytes'] / 2**20:.1f} MiB written to disk")


def report_training_cache(store: FeatureStore | None, accelerator=None, world: int = 1) -> None:
    """At the end of a run: the cache's counts (summed over processes) and, when it wrote entries
    and the cache has grown past another 20 GiB, where it lives and how big it is."""
    if store is None:
        return
    counts = run_counts(store, accelerator, world)
    if not is_main_process():
        return
    print(describe_counts(counts, world))
    note = vision_cache_note(store.directory.parent) if counts["entries"] and store.directory is not None else None
    if note:
        print(note)
