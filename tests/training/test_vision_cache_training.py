"""train.vision_cache changes nothing but speed: losses and adapters equal an uncached run."""

import json
import os
import re
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from mmlora.config.loading import load_recipe
from mmlora.models.tiny import assets_dir
from mmlora.models.vision_store import FeatureStore
from mmlora.training.train import train
from tests.training.test_distributed import losses as logged_losses

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    """12 rows over 6 images (each image asked twice), answers of mixed length."""
    images = sorted((assets_dir() / "demo" / "images").glob("*.png"))[:6]
    rows = [{"image": str(image), "question": q, "answer": "red" if i % 2 else "a red circle on white " * (1 + i % 3)}
            for i, image in enumerate(images) for q in ("What is it?", "Which colour?")]
    path = tmp_path_factory.mktemp("data") / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def run(out, data, cache: str, cache_dir, *extra):
    recipe = load_recipe("tiny_vqa", [
        f"train.output_dir={out}", f"data.train={data}", "data.eval=null", "data.allow_outside_root=true",
        "lora.projector=frozen", "train.epochs=2", "train.batch_size=3", "train.logging_steps=1",
        "train.save_steps=0", "eval.generate_at_end=false", f"train.vision_cache={cache}",
        f"train.vision_cache_dir={cache_dir}", *extra])
    result = train(recipe)
    losses = [entry["loss"] for entry in result.log_history if "loss" in entry]
    inner = result.model.get_base_model().model
    return losses, load_file(out / "adapter_model.safetensors"), getattr(inner, "mmlora_vision_store", None)


def assert_same_run(cached, plain):
    (losses, adapter, store), (plain_losses, plain_adapter, no_store) = cached, plain
    assert no_store is None and store is not None
    assert len(losses) == len(plain_losses) >= 4
    assert losses == pytest.approx(plain_losses, rel=1e-6)
    assert adapter.keys() == plain_adapter.keys()
    for name in adapter:
        torch.testing.assert_close(adapter[name], plain_adapter[name], rtol=1e-6, atol=1e-7)


GROUPED = ("train.grad_accum=2", "data.group_by_length=true")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def uncached(tmp_path_factory, rows, cache_dir):
    return run(tmp_path_factory.mktemp("off"), rows, "off", cache_dir, *GROUPED)


def test_cached_training_equals_uncached_with_grad_accum_and_grouping(tmp_path, rows, cache_dir, uncached):
    cached = run(tmp_path, rows, "auto", cache_dir, *GROUPED)
    assert_same_run(cached, uncached)
    stats = cached[2].stats
    # 6 images, 24 uses over two epochs: each encoded once, every later batch reads them.
    assert stats.misses == stats.entries == 6 and stats.hits_ram >= 6


def test_cached_training_equals_uncached_with_packing(tmp_path, rows):
    packed = ("data.packing=true",)
    assert_same_run(run(tmp_path / "auto", rows, "auto", tmp_path / "cache", *packed),
                    run(tmp_path / "off", rows, "off", tmp_path / "cache", *packed))


def test_cache_survives_a_restart(tmp_path, rows, cache_dir, uncached):
    # Runs after the first test filled cache_dir: a new process state finds every image on disk.
    cached = run(tmp_path, rows, "auto", cache_dir, *GROUPED)
    assert cached[2].stats.entries == 0 and cached[2].stats.hits_disk == 6
    assert_same_run(cached, uncached)


class StopAtStep(TrainerCallback):
    """SIGTERM to this process at the end of one step (the run saves a checkpoint and stops)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_resume_with_the_cache_equals_the_uninterrupted_uncached_run(tmp_path, rows, uncached):
    out = tmp_path / "run"
    saving = ["train.save_steps=1", f"data.train={rows}"]
    first = load_recipe("tiny_vqa", [
        f"train.output_dir={out}", "data.eval=null", "data.allow_outside_root=true", "lora.projector=frozen",
        "train.epochs=2", "train.batch_size=3", "train.logging_steps=1", "eval.generate_at_end=false",
        "train.vision_cache=auto", f"train.vision_cache_dir={tmp_path / 'cache'}", *GROUPED, *saving])
    stopped = train(first, callbacks=[StopAtStep(2)])
    assert stopped.checkpoint.name == "checkpoint-2"
    # Resumed with the cache switched off: allowed (it changes speed only), and exact.
    first.train.vision_cache = "off"
    resumed = train(first, resume="latest")
    losses = {h["step"]: h["loss"] for h in resumed.log_history if "loss" in h}
    assert [losses[step] for step in sorted(losses)] == pytest.approx(uncached[0], rel=1e-6)
    adapter = load_file(out / "adapter_model.safetensors")
    for name, tensor in uncached[1].items():
        torch.testing.assert_close(adapter[name], tensor, rtol=1e-6, atol=1e-7)


def train_two_ranks(out, data, cache: str, cache_dir) -> subprocess.CompletedProcess:
    """`mmlora train` as 2 gloo processes (torchrun, as tests/training/test_distributed.py runs DDP)."""
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "mmlora", "train", "tiny_vqa",
         f"train.output_dir={out}", f"data.train={data}", "data.eval=null", "data.allow_outside_root=true",
         "lora.projector=frozen", "train.epochs=2", "train.batch_size=2", "train.logging_steps=1", "train.save_steps=0",
         "eval.generate_at_end=false", f"train.vision_cache={cache}", f"train.vision_cache_dir={cache_dir}"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_two_process_training_with_a_shared_disk_cache_equals_uncached(tmp_path, rows):
    """DDP on 2 CPU processes, both ranks caching into one folder: the same run as uncached."""
    cache_dir = tmp_path / "cache"
    plain = train_two_ranks(tmp_path / "off", rows, "off", cache_dir)
    assert not cache_dir.exists() and "vision cache" not in plain.stdout
    cached = train_two_ranks(tmp_path / "auto", rows, "auto", cache_dir)
    assert "vision cache: on (train.epochs=2)" in cached.stdout
    # 2 ranks x 2 per step over 12 rows, 2 epochs: 6 steps, same losses and adapter as uncached
    losses, plain_losses = logged_losses(tmp_path / "auto"), logged_losses(tmp_path / "off")
    assert len(losses) == len(plain_losses) == 6
    assert losses == pytest.approx(plain_losses, rel=1e-6)
    adapter, plain_adapter = (load_file(tmp_path / run / "adapter_model.safetensors") for run in ("auto", "off"))
    assert adapter.keys() == plain_adapter.keys()
    for name in adapter:
        torch.testing.assert_close(adapter[name], plain_adapter[name], rtol=1e-6, atol=1e-7)
    # The counts of both ranks, summed (rank 0 prints them). Every one of the 6 images was encoded
    # by some rank (rank 0 alone encodes fewer with seed 42: it never meets some images before
    # rank 1 has written them); more than 6 only when both ranks met a new image in the same step.
    # Each rank keeps its own entries in RAM (4GiB budget), so a hit from disk is an entry the
    # other rank wrote: with seed 42 rank 0 meets in epoch 2 images only rank 1 saw in epoch 1.
    # Lookups: at most one per row and epoch (an image twice in one batch is looked up once), at
    # least one per batch of each rank (6 steps x 2 ranks). Seen: 8 encoded, 14 reused (timing
    # decides how many of the 22 lookups were misses on both ranks at once).
    counts = re.search(r"vision cache over 2 processes: (\d+) images encoded, (\d+) reused \((\d+) from disk\), "
                       r"(\d+) bad", cached.stdout)
    encoded, reused, from_disk, bad = map(int, counts.groups())
    assert 6 <= encoded and 12 <= encoded + reused <= 24 and from_disk >= 1 and bad == 0
    # One folder for both ranks, each of the 6 images once, every file whole and trusted.
    (folder,) = [path for path in cache_dir.iterdir()]
    entries = sorted(folder.glob("*/*.safetensors"))
    assert len(entries) == 6 and not list(folder.rglob("*.partial"))
    store = FeatureStore(folder, folder.name, memory_budget=0)
    assert all(store.get(entry.stem) is not None for entry in entries) and store.stats.rejected == 0
