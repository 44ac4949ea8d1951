"""The vision-feature cache: exact features per family, safe disk entries, keys that notice change."""

import pytest
import torch
from PIL import Image

from mmlora.config.schema import ModelConfig
from mmlora.data.collate import generation_batch
from mmlora.data.samples import Sample, user_turn
from mmlora.models.loading import load_model_and_processor
from mmlora.models.vision_cache import (
    install_vision_cache, namespace_of, open_store, remove_vision_cache, why_not_cacheable,
)
from mmlora.models.vision_store import FeatureStore


def samples(*sizes, green=120):
    return [Sample([Image.new("RGB", size, (30 * i, green, 60))], [user_turn("What is it?")], "x")
            for i, size in enumerate(sizes)]


def frozen(loaded):
    for p in loaded.model.parameters():
        p.requires_grad_(False)
    return loaded.model.eval()


@pytest.mark.parametrize("model_id", ["tiny/qwen2-vl", "tiny/qwen3-vl", "tiny/llava", "tiny/gemma3", "tiny/paligemma"])
def test_cached_logits_equal_uncached_for_every_splitting_family(model_id, tmp_path):
    loaded = load_model_and_processor(ModelConfig(name=model_id), device="cpu")
    model = frozen(loaded)
    assert why_not_cacheable(model, loaded.family) is None
    first = generation_batch(loaded.processor, samples((60, 50), (90, 40), (50, 80)))
    # The second batch mixes cached images (in another order) with a new one.
    mixed_samples = samples((60, 50), (90, 40), (50, 80))
    mixed = generation_batch(loaded.processor, [mixed_samples[2], *samples((70, 70), green=10), mixed_samples[0]])
    with torch.no_grad():
        expected = [model(**first).logits, model(**mixed).logits]
        store = open_store(model, loaded.family, {}, str(tmp_path), 1 << 30)
        install_vision_cache(model, loaded.family, store)
        got = [model(**first).logits, model(**first).logits, model(**mixed).logits]
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[0])
    assert torch.equal(got[2], expected[1])
    assert store.stats.misses == 4 and store.stats.hits_ram == 5  # 3 images, then 3 reused, then 2 + 1 new
    remove_vision_cache(model)
    assert "get_image_features" not in vars(model.model)


@pytest.mark.parametrize("model_id, family", [("tiny/llava-next", "llava_next"), ("tiny/smolvlm", "idefics3")])
def test_families_without_per_image_features_are_refused_with_the_reason(model_id, family):
    loaded = load_model_and_processor(ModelConfig(name=model_id), device="cpu")
    reason = why_not_cacheable(frozen(loaded), loaded.family)
    assert reason.startswith(f"the {family} family is not supported: ") and "per" in reason


def test_trained_projector_or_tower_turns_the_cache_off():
    loaded = load_model_and_processor(ModelConfig(name="tiny/qwen2-vl"), device="cpu")
    model = frozen(loaded)
    model.model.visual.merger.mlp[0].weight.requires_grad_(True)
    assert "projector is trained" in why_not_cacheable(model, loaded.family)


def test_namespace_follows_tower_weights_dtype_and_bounds_not_the_language_tower():
    loaded = load_model_and_processor(ModelConfig(name="tiny/qwen2-vl"), device="cpu")
    model = frozen(loaded)
    base, _ = namespace_of(model, loaded.family, {"max_pixels": 100})
    assert namespace_of(model, loaded.family, {"max_pixels": 200})[0] != base
    with torch.no_grad():
        model.model.language_model.layers[0].mlp.up_proj.weight.add_(1.0)  # what LoRA merging changes
        assert namespace_of(model, loaded.family, {"max_pixels": 100})[0] == base
        weight = model.model.visual.blocks[0].attn.qkv.weight
        weight[0, 0] = torch.nextafter(weight[0, 0], torch.tensor(1.0))  # one ulp in the tower
        assert namespace_of(model, loaded.family, {"max_pixels": 100})[0] != base
        weight[0, 0] = torch.nextafter(weight[0, 0], torch.tensor(-1.0))
    assert namespace_of(model, loaded.family, {"max_pixels": 100})[0] == base
    assert namespace_of(model.to(torch.bfloat16), loaded.family, {"max_pixels": 100})[0] != base


def entry():
    return {"pooler_output": torch.randn(5, 8), "deepstack_0": torch.randn(5, 8).to(torch.bfloat16)}


def test_entries_beyond_the_ram_budget_are_read_back_exactly_from_disk(tmp_path):
    tensors = entry()
    store = FeatureStore(tmp_path, "ns", memory_budget=0)
    store.put("ab" * 20, tensors)
    assert store.stats.ram_bytes == 0 and store.path("ab" * 20).is_file()
    assert not list(tmp_path.rglob("*.partial"))
    again = FeatureStore(tmp_path, "ns", memory_budget=1 << 20).get("ab" * 20)
    assert again.keys() == tensors.keys() and all(torch.equal(again[k], tensors[k]) for k in tensors)
    assert FeatureStore(tmp_path, "other-namespace", 1 << 20).get("ab" * 20) is None  # stale: never used


@pytest.mark.parametrize("damage", ["truncate", "flip", "renamed"])
def test_corrupt_partial_or_foreign_entries_are_rejected_and_removed(tmp_path, damage):
    store = FeatureStore(tmp_path, "ns", memory_budget=0)
    store.put("cd" * 20, entry())
    path = store.path("cd" * 20)
    data = bytearray(path.read_bytes())
    if damage == "truncate":  # a partial file (e.g. a copy cut short)
        path.write_bytes(data[: len(data) - 7])
    elif damage == "flip":  # one bit of the tensor data
        data[-3] ^= 0x10
        path.write_bytes(data)
    else:  # a well-formed entry under another image's name
        target = store.path("ef" * 20)
        target.parent.mkdir(parents=True, exist_ok=True)
        path.rename(target)
        path = target
    fresh = FeatureStore(tmp_path, "ns", memory_budget=1 << 20)
    assert fresh.get(path.stem) is None
    assert fresh.stats.rejected == 1 and not path.exists()


def test_ranks_share_the_disk_part_and_keep_their_own_ram(tmp_path):
    # Multi-process runs: one store per rank on the same folder. What one rank encoded, another
    # reads from disk; both writing the same image leaves one complete file.
    rank0, rank1 = (FeatureStore(tmp_path, "ns", memory_budget=1 << 20) for _ in range(2))
    tensors = entry()
    rank0.put("aa" * 20, tensors)
    got = rank1.get("aa" * 20)
    assert rank1.stats.hits_disk == 1 and torch.equal(got["pooler_output"], tensors["pooler_output"])
    rank1.put("bb" * 20, tensors)
    rank0.put("bb" * 20, tensors)
    files = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert files == [f"{'aa' * 20}.safetensors", f"{'bb' * 20}.safetensors"]  # no partial files left
    assert FeatureStore(tmp_path, "ns", 0).get("bb" * 20) is not None
