"""`mmlora eval --compare-base` and the in-training evaluation encode each image once."""

import json

import pytest

import mmlora.evaluation.run as eval_run
from mmlora.config.loading import load_recipe
from mmlora.models.tiny import assets_dir
from mmlora.training.train import train

pytestmark = pytest.mark.slow

LIMIT = 10
SHARE = eval_run.shared_feature_store


@pytest.fixture(scope="module")
def eval_rows(tmp_path_factory):
    """The demo's first LIMIT eval rows (a short eval-loss pass), image paths made absolute."""
    demo = assets_dir() / "demo"
    rows = [json.loads(line) for line in (demo / "vqa_eval.jsonl").read_text().splitlines()[:LIMIT]]
    path = tmp_path_factory.mktemp("data") / "eval.jsonl"
    path.write_text("".join(json.dumps({**row, "image": str(demo / row["image"])}) + "\n" for row in rows))
    return [f"data.eval={path}", "data.allow_outside_root=true"]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, eval_rows):
    """A short run with the projector frozen, whose in-training evaluation repeats its images."""
    out = tmp_path_factory.mktemp("run")
    recipe = load_recipe("tiny_vqa", [
        f"train.output_dir={out}", "lora.projector=frozen", "train.max_steps=1", "train.save_steps=0",
        "train.eval_strategy=steps", "train.eval_steps=1", f"eval.limit={LIMIT}",
        f"train.vision_cache_dir={tmp_path_factory.mktemp('cache')}", *eval_rows])
    result = train(recipe)
    return out, result.model.get_base_model().model.mmlora_vision_store, eval_rows


def first_eval_images(count: int) -> int:
    """Distinct images among the first `count` rows of the demo's eval data."""
    lines = (assets_dir() / "demo" / "vqa_eval.jsonl").read_text().splitlines()[:count]
    return len({json.loads(line)["image"] for line in lines})


def test_in_training_evaluation_reads_the_cache(adapter):
    _, store, _ = adapter
    # One step over 8 of the training images (seen once: not cached, only evaluation is); the
    # eval loss at step 1 encodes the eval images, the final generation reads each of them back.
    assert store.stats.entries == store.stats.misses == first_eval_images(LIMIT) >= 2
    assert store.stats.hits_ram >= first_eval_images(LIMIT)


def evaluate(adapter, tmp_path, cache, monkeypatch):
    out, _, eval_rows = adapter
    stores = []
    monkeypatch.setattr(eval_run, "shared_feature_store", lambda *a: stores.append(SHARE(*a)) or stores[-1])
    recipe = load_recipe("tiny_vqa", [f"train.output_dir={out}", f"train.vision_cache={cache}",
                                      f"train.vision_cache_dir={tmp_path / 'cache'}", *eval_rows])
    report, _ = eval_run.run_eval(recipe, compare_base=True, limit=LIMIT, output_dir=str(tmp_path / cache))
    return [run.predictions for run in report.runs], stores


def test_compare_base_encodes_each_image_once_for_both_models(adapter, tmp_path, monkeypatch):
    predictions, stores = evaluate(adapter, tmp_path, "auto", monkeypatch)
    plain, no_stores = evaluate(adapter, tmp_path, "off", monkeypatch)
    assert predictions == plain and no_stores == [None]
    base_store, tuned_store = stores
    assert tuned_store is base_store  # the frozen projector: same tower weights, same features
    images = first_eval_images(LIMIT)
    assert base_store.stats.entries == base_store.stats.misses == images  # encoded once, for both models
    assert base_store.stats.hits_ram >= images  # the fine-tuned model's pass reads every image
