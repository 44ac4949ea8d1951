"""Encode each image once: a cache of the frozen vision tower's (and projector's) features.

With the vision tower and projector frozen, an image's features are the same every epoch and
for every evaluation. `install_vision_cache` wraps the inner model's `get_image_features` (the
one place every family computes them, families/features.py) so that each image of a call is
looked up by its key, only the missing images run through the tower (in one call, in batch
order), and the per-image features are joined back as the family's forward expects.

The key of one image: a blake2b hash of the exact tensors the tower would receive for it
(its processed pixels and grid: the image's content after resizing, so the processor's bounds
and normalisation are in it) and of the call's options. The namespace (a folder of the disk
cache) hashes what else decides the features: the model id and revision, the dtype, the
transformers version, the model's config, the processor's bounds and a fingerprint of every
weight and buffer of the frozen tower and projector. Changing any of them starts a new
namespace, so a stale entry is never read.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
from pathlib import Path

from mmlora.config.sizes import parse_bytes
from mmlora.data.cache_entries import mark_used
from mmlora.errors import MmloraError
from mmlora.models.families import Family, find_module, projector_modules
from mmlora.models.vision_store import FeatureStore, default_cache_dir, tensor_bytes

log = logging.getLogger(__name__)

_MARK = "_mmlora_vision_cache"


def _inner_model(model):
    """The module that owns get_image_features (the *Model inside *ForConditionalGeneration)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base, base.model


def _frozen_parts(base, family: Family) -> list:
    parts = [find_module(base, family.vision_tower, family)]
    return parts + [base.get_submodule(name) for name in projector_modules(base, family)]


def why_not_cacheable(model, family: Family, training: bool = True) -> str | None:
    """Why this model's image features cannot be cached, or None when they can.

    `training=False` (evaluation, generation): weights do not change while the cache is used, and
    a weight change between models (a merged adapter) changes the namespace, so `requires_grad`
    and dropout do not matter."""
    if family.feature_layout is None:
        return f"the {family.name} family is not supported: {family.feature_cache_refusal}"
    base, _ = _inner_model(model)
    parts = _frozen_parts(base, family)
    if not training:
        return None
    if any(p.requires_grad for part in parts for p in part.parameters()):
        return "the vision tower or projector is trained (lora.vision / lora.projector), so features change every step"
    if any(getattr(p, "ds_id", None) is not None for part in parts for p in part.parameters()):
        return "DeepSpeed ZeRO-3 shards the tower: every rank must run it each step to gather its weights"
    for part in parts:
        for module in part.modules():
            if type(module).__name__ == "Dropout" and module.p > 0:
                return "the vision tower or projector uses dropout, so its features differ between runs"
    vision_config = getattr(base.config, "vision_config", None)
    for name in ("attention_dropout", "dropout", "hidden_dropout", "hidden_dropout_prob"):
        if (getattr(vision_config, name, 0.0) or 0.0) > 0:
            return f"the vision tower uses dropout (vision_config.{name} > 0), so its features differ between runs"
    return None


def weights_fingerprint(model, family: Family) -> str:
    """blake2b over every parameter and buffer of the tower and projector (names, dtypes, bytes)."""
    base, _ = _inner_model(model)
    hasher = hashlib.blake2b(digest_size=20)
    for part in _frozen_parts(base, family):
        for name, tensor in [*part.named_parameters(), *part.named_buffers()]:
            hasher.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            hasher.update(tensor_bytes(tensor))
    return hasher.hexdigest()


def namespace_of(model, family: Family, bounds: dict) -> tuple[str, dict]:
    """The namespace hash and the facts it is made of (written to the folder's about.json)."""
    import transformers

    base, _ = _inner_model(model)
    config = base.config.to_dict()
    config.pop("_name_or_path", None)
    facts = {
        "model": str(getattr(base.config, "_name_or_path", "")),
        "revision": getattr(base.config, "_commit_hash", None),
        "dtype": str(next(base.parameters()).dtype),
        "transformers": transformers.__version__,
        "family": family.name,
        "processor_bounds": bounds,
        "config": hashlib.blake2b(json.dumps(config, sort_keys=True, default=str).encode(), digest_size=16).hexdigest(),
        "weights": weights_fingerprint(model, family),
    }
    text = json.dumps(facts, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest(), facts


def image_key(unit: dict, options: str) -> str:
    """The key of one image: its input tensors as the tower receives them, and the call's options
    (get_image_features' named arguments, e.g. LLaVA's vision_feature_layer). Its **kwargs are
    not part of the key: the forward hands on there what the *text* side was given (the
    Trainer's num_items_in_batch, shift_labels), which does not change the features."""
    hasher = hashlib.blake2b(options.encode(), digest_size=20)
    for name in sorted(unit):
        tensor = unit[name]
        hasher.update(f"|{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        hasher.update(tensor_bytes(tensor))
    return hasher.hexdigest()


def open_store(model, family: Family, bounds: dict, directory: str | None, memory_budget: int) -> FeatureStore:
    """A FeatureStore for this model's namespace under `directory` (default: default_cache_dir())."""
    namespace, facts = namespace_of(model, family, bounds)
    folder = (Path(directory).expanduser() if directory else default_cache_dir()) / namespace
    try:
        folder.mkdir(parents=True, exist_ok=True)
        about = folder / "about.json"
        if not about.exists():
            about.write_text(json.dumps(facts, indent=2, default=str) + "\n")
        mark_used(about)  # its mtime is the namespace's last use (`mmlora cache clear --older-than`)
    except OSError as error:
        raise MmloraError(f"train.vision_cache_dir: cannot write to {folder} ({error.strerror}). "
                          "Point train.vision_cache_dir at a writable folder, or set train.vision_cache=off.") from None
    return FeatureStore(folder, namespace, memory_budget)


def recipe_bounds(recipe) -> dict:
    """The processor's bounds as the cache's namespace records them."""
    return {"min_pixels": recipe.model.min_pixels, "max_pixels": recipe.model.max_pixels}


def open_recipe_store(model, family, recipe) -> FeatureStore:
    """The store the recipe's train.vision_cache_dir / vision_cache_memory describe, for this model."""
    return open_store(model, family, recipe_bounds(recipe), recipe.train.vision_cache_dir,
                      parse_bytes(recipe.train.vision_cache_memory, "train.vision_cache_memory"))


def install_vision_cache(model, family: Family, store: FeatureStore, in_training: bool = True) -> None:
    """Make `model` (PeftModel or plain) read image features from `store`, computing only misses.

    `in_training=False`: calls made while the model is in train mode bypass the cache (a run
    whose training images are seen once caches only its evaluation). Installing again replaces
    the store (e.g. after merging an adapter into the weights)."""
    _, inner = _inner_model(model)
    original = getattr(inner, _MARK, None) or inner.get_image_features
    layout = family.feature_layout
    signature = inspect.signature(original)
    extra = next((p.name for p in signature.parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD), None)

    @functools.wraps(original)
    def cached_get_image_features(*args, **kwargs):
        arguments = signature.bind(*args, **kwargs).arguments
        passed_on = arguments.pop(extra, None) or {}
        inputs = {name: arguments.pop(name) for name in layout.inputs if arguments.get(name) is not None}
        options = {k: v for k, v in arguments.items() if k != "return_dict"}
        if inner.training and not in_training:
            return original(*args, **kwargs)
        if len(inputs) != len(layout.inputs) or any(hasattr(v, "shape") for v in options.values()):
            store.stats.uncached_calls += 1
            return original(*args, **kwargs)  # a call shape the layout does not describe: uncached
        options = json.dumps(options, sort_keys=True, default=str)
        units = layout.split_inputs(inputs)
        keys = [image_key(unit, options) for unit in units]
        features = {key: store.get(key) for key in dict.fromkeys(keys)}  # an image twice in a batch: once
        missing = [key for key, value in features.items() if value is None]
        if missing:
            first = {key: keys.index(key) for key in missing}
            missed = layout.join_inputs([units[first[key]] for key in missing])
            for key, computed in zip(missing, layout.split_outputs(original(**missed, **arguments, **passed_on))):
                features[key] = {name: t.detach() for name, t in computed.items()}
                store.put(key, {name: t.cpu().clone() for name, t in features[key].items()})
        device = inputs["pixel_values"].device
        return layout.join_outputs([{n: t.to(device) for n, t in features[key].items()} for key in keys])

    setattr(inner, _MARK, original)
    inner.get_image_features = cached_get_image_features  # instance attribute: forward calls self.get_image_features
    inner.mmlora_vision_store = store


def remove_vision_cache(model) -> None:
    """Undo install_vision_cache (the model computes every image again)."""
    _, inner = _inner_model(model)
    original = getattr(inner, _MARK, None)
    if original is not None:
        del inner.get_image_features
        delattr(inner, _MARK)
        del inner.mmlora_vision_store
