"""Mixtures in data.train: weighted sampling per epoch, a resolution per source that reaches the
image processor in training, data check / preview and eval, and per-source reports and errors."""

import collections
import json

import pytest
import torch
from PIL import Image

from mmlora.config.loading import recipe_from_dict
from mmlora.data.check import run_data_command, check_recipe, format_check, preview_samples, training_would_stop
from mmlora.data.collate import generation_batch
from mmlora.data.loading import load_samples
from mmlora.data.mixture import epoch_order, source_counts
from mmlora.data.scan import TrainingDataset, enforce_on_error, scan_split
from mmlora.errors import MmloraError

SMALL = 4 * 28 * 28     # at most 4 visual tokens per image (Qwen2-VL: one per 28x28 px)
LARGE = 128 * 28 * 28   # at least 128 (the 200x300 photo is upscaled past the model's bounds)


def write_rows(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture
def two_sources(tmp_path):
    """docs.jsonl: 3 rows over a 300x200 image; photos.jsonl: 6 rows over a 200x300 image."""
    Image.new("RGB", (300, 200), "white").save(tmp_path / "doc.png")
    Image.new("RGB", (200, 300), "red").save(tmp_path / "photo.png")
    docs = write_rows(tmp_path / "docs.jsonl", [{"image": "doc.png", "question": f"Line {i}?", "answer": f"d{i}"}
                                                for i in range(3)])
    photos = write_rows(tmp_path / "photos.jsonl", [{"image": "photo.png", "question": "Color?", "answer": f"p{i}"}
                                                    for i in range(6)])
    return docs, photos


def mixture_recipe(train, **data):
    return recipe_from_dict({"model": {"name": "tiny/qwen2-vl", "max_pixels": 448 * 448},
                             "data": {"train": train, "max_length": 1024, **data}})


def test_source_counts_follow_the_weights_exactly():
    # 45 samples at weights 1:1:2 -> 11.25, 11.25, 22.5; the one left over goes to the largest remainder
    assert source_counts([1, 1, 2], 45) == [11, 11, 23]
    assert source_counts([3, 1], 8) == [6, 2]


def test_epoch_order_draws_each_source_its_share():
    sizes, weights = [10, 30, 5], [1, 1, 2]
    order = epoch_order(sizes, weights, seed=7, epoch=0)
    assert len(order) == sum(sizes)
    per_source = collections.Counter(0 if i < 10 else 1 if i < 40 else 2 for i in order)
    assert [per_source[k] for k in range(3)] == [11, 11, 23]
    # the large source drawn less than its size: distinct samples, a different subset next epoch
    big = [i for i in order if 10 <= i < 40]
    assert len(set(big)) == 11
    assert {i for i in epoch_order(sizes, weights, 7, 1) if 10 <= i < 40} != set(big)
    # the small source drawn 23 times over 5 samples: each 4 times, 3 of them a fifth time
    small = collections.Counter(i for i in order if i >= 40)
    assert sorted(small.values()) == [4, 4, 5, 5, 5]
    # deterministic by seed and epoch
    assert epoch_order(sizes, weights, 7, 0) == order
    assert epoch_order(sizes, weights, 8, 0) != order


def test_training_dataset_samples_by_weight_and_reencodes_per_source(two_sources, processor):
    docs, photos = two_sources
    r = mixture_recipe([{"path": docs, "weight": 3, "max_pixels": SMALL},
                        {"path": photos, "weight": 1, "min_pixels": LARGE, "max_pixels": LARGE * 2}])
    scan = scan_split(r.data.train, r.data, processor, "train", progress=False)
    assert [len(p.samples) for p in scan.parts] == [3, 6]
    dataset = TrainingDataset(scan, processor, r.data, seed=1)
    assert len(dataset) == 9
    answers = lambda: collections.Counter(scan.samples[i].messages[-1]["content"][0]["text"][0]  # noqa: E731
                                          for i in dataset.order)
    # 9 samples at 3:1 -> 6.75 docs and 2.25 photos -> 7 and 2; docs repeat, photos are a subset
    assert answers() == {"d": 7, "p": 2}
    first = sorted(dataset.order)
    dataset.set_epoch(1)
    assert answers() == {"d": 7, "p": 2}
    assert sorted(dataset.order) != first  # another draw: seed 1 picks other photos in epoch 1
    # each example is encoded at its source's bounds, as the image processor resizes at them
    for position in range(len(dataset)):
        sample = scan.samples[dataset.order[position]]
        example = dataset[position]
        low, high = (processor.pixel_bounds[0], SMALL) if sample.source.startswith(docs) else (LARGE, LARGE * 2)
        expected = processor.image_processor(images=[Image.open(sample.images[0]).convert("RGB")],
                                              size={"shortest_edge": low, "longest_edge": high}, return_tensors="pt")
        assert torch.equal(example.image_grid_thw, expected["image_grid_thw"])
        assert torch.equal(example.pixel_values, expected["pixel_values"])


def test_eval_generation_resizes_each_source_at_its_bounds(two_sources, processor):
    docs, photos = two_sources
    r = mixture_recipe(docs, eval=[{"path": docs, "max_pixels": SMALL}, {"path": photos, "min_pixels": LARGE}])
    samples = load_samples(r.data.eval, r.data, "vqa")
    assert [s.pixel_bounds for s in samples] == [(None, SMALL)] * 3 + [(LARGE, None)] * 6
    batch = generation_batch(processor, [samples[0], samples[3]])
    # Qwen2-VL's smart_resize: 300x200 into 4 tokens' area -> 56x28 px = 2x4 patches of 14 px;
    # 200x300 (60000 px) up to >= 100352 px: x sqrt(100352/60000), rounded up to 28 -> 280x392,
    # 28x20 patches (at the model's bounds it stays 196x308: 22x14)
    assert batch["image_grid_thw"].tolist() == [[1, 2, 4], [1, 28, 20]]
    assert generation_batch(processor, [samples[3]])["image_grid_thw"].tolist() == [[1, 28, 20]]
    samples[3].pixel_bounds = None
    assert generation_batch(processor, [samples[3]])["image_grid_thw"].tolist() == [[1, 22, 14]]


def test_data_check_reports_each_source(two_sources, tmp_path, processor):
    docs, photos = two_sources
    broken = write_rows(tmp_path / "broken.jsonl", [{"image": "photo.png", "question": "Q?", "answer": "a"},
                                                    {"image": "gone.png", "question": "Q?", "answer": "b"}])
    r = mixture_recipe([{"path": docs, "weight": 2, "max_pixels": SMALL}, broken], on_error="skip")
    report = check_recipe(r, processor, progress=False)
    train = report["train"]
    assert (train["rows"], train["samples"], train["skipped"]) == (5, 4, {"missing_image": 1})
    assert [(s["source"], s["rows"], s["samples"], s["weight"]) for s in train["sources"]] == \
        [(docs, 3, 3, 2.0), (broken, 2, 1, 1.0)]
    # docs at 4 tokens' area: 2 visual tokens; the other source at the model's bounds
    assert train["sources"][0]["images"]["visual_tokens"]["max"] == 2
    assert train["sources"][1]["images"]["visual_tokens"]["max"] > 2
    text = format_check(report)
    assert f"  data.train[0]: {docs}  (weight 2, 3 per epoch; min/max_pixels model/{SMALL})" in text.splitlines()
    assert f"  data.train[1]: {broken}  (weight 1, 1 per epoch; min/max_pixels model/model)" in text.splitlines()
    assert "    bad rows by reason: missing_image 1" in text.splitlines()
    assert sum("gone.png" in line for line in text.splitlines()) == 1  # under its source, not again in the totals
    # preview: the first sample of each source, each at its own resolution
    items = preview_samples(r, n=1, processor=processor)
    assert [item["num_image_tokens"] for item in items] == [2, train["sources"][1]["images"]["visual_tokens"]["max"]]


def test_a_bad_source_is_named(two_sources, tmp_path, processor):
    docs, _ = two_sources
    r = mixture_recipe([docs, str(tmp_path / "nope.jsonl")])
    with pytest.raises(MmloraError, match=r"^data.train\[1\]: Data '.*nope.jsonl' does not exist"):
        scan_split(r.data.train, r.data, processor, "train", progress=False)
    gone = write_rows(tmp_path / "gone.jsonl", [{"image": "gone.png", "question": "Q?", "answer": "b"}])
    r = mixture_recipe([docs, gone], on_error="skip")
    scan = scan_split(r.data.train, r.data, processor, "train", progress=False)
    with pytest.raises(MmloraError, match=r"^data.train\[1\] \(.*gone.jsonl\): no usable samples"):
        enforce_on_error(scan, "skip")
    assert training_would_stop(check_recipe(r, processor, progress=False), "skip")


@pytest.mark.parametrize("entry, message", [
    ({"path": "a.jsonl", "wieght": 2}, r"data.train\[1\]: unknown key\(s\) 'wieght'"),
    ({"path": "a.jsonl", "weight": 0}, r"data.train\[1\].weight: got 0, expected a positive number"),
    ({"path": "a.jsonl", "min_pixels": 5000, "max_pixels": 4000}, r"data.train\[1\]: min_pixels \(5000\) is larger"),
    ({"path": "a.jsonl", "format": "csv"}, r"data.train\[1\].format: got 'csv'"),
    ({"weight": 2}, r"data.train\[1\]: needs `path`"),
    ({"path": "a.jsonl", "weight": float("inf")}, r"data.train\[1\].weight: got inf, expected a positive number"),
    ("b.jsonl", r": data.train\[1\]: b.jsonl is already data.train\[0\]; list a source once and give it a larger weight"),
    ({"path": "b.jsonl", "weight": 3}, r": data.train\[1\]: b.jsonl is already data.train\[0\]"),
    ("hf:", r": data.train\[1\]: 'hf:': expected hf:ORG/NAME\[:CONFIG\]\[@SPLIT\]"),
    ("hf:a/b@", r": data.train\[1\]: 'hf:a/b@': expected"),
    ("hf:a/b:", r": data.train\[1\]: 'hf:a/b:': expected"),
    ("hf:a/b@x@y", r": data.train\[1\]: 'hf:a/b@x@y': expected"),
    ("hf: a/b", r": data.train\[1\]: 'hf: a/b': expected"),
    ({"path": "hf:a/b", "split": ""}, r": data.train\[1\].split: got '', expected a non-empty string"),
])
def test_recipe_refuses_a_malformed_source(entry, message):
    with pytest.raises(MmloraError, match=message):
        mixture_recipe(["b.jsonl", entry])


def test_a_weight_on_an_eval_source_is_refused():
    with pytest.raises(MmloraError, match=r"data.eval\[1\].weight: data.eval is never sampled"):
        mixture_recipe(["a.jsonl"], eval=["b.jsonl", {"path": "c.jsonl", "weight": 3}])
    with pytest.raises(MmloraError, match=r"data.eval\[1\]: b.jsonl is already data.eval\[0\]; list a source once\.$"):
        mixture_recipe(["a.jsonl"], eval=["b.jsonl", "b.jsonl"])


def test_weights_whose_sum_overflows_are_refused():
    with pytest.raises(MmloraError, match=r"data.train: the weights add up to more than a number can hold"):
        mixture_recipe([{"path": "b.jsonl", "weight": 1e308}, {"path": "c.jsonl", "weight": 1e308}])


def test_data_check_says_why_it_exits_1_and_draws_nothing_from_an_empty_source(two_sources, tmp_path):
    docs, _ = two_sources
    gone = write_rows(tmp_path / "gone.jsonl", [{"image": "gone.png", "question": "Q?", "answer": "b"}])
    text, status = run_data_command("check", ["tiny_vqa"], [f"data.train=[{docs}, {gone}]", "data.eval=null"])
    assert status == 1
    assert f"data.train[1]: {gone}  (weight 1, nothing to draw;" in text
    assert text.splitlines()[-2:] == [
        "mmlora train would stop: data.train: 1 bad row(s) and data.on_error=raise (fix them, or set "
        "data.on_error=skip)",
        f"mmlora train would stop: data.train[1] ({gone}): no usable samples (fix or remove it)"]


def test_group_by_length_is_refused_with_a_mixture():
    with pytest.raises(MmloraError, match="data.group_by_length cannot be combined with a mixture"):
        mixture_recipe(["a.jsonl", "b.jsonl"], group_by_length=True)


@pytest.mark.slow  # a training run (~10 s on 2 shared cores)
def test_training_run_on_a_mixture(two_sources, tmp_path, capsys):
    """`mmlora train` end to end: each source pre-scanned at its own bounds and trained at them
    (training refuses an example whose visual tokens differ from the scan's), reported per source."""
    from mmlora.cli import main

    docs, photos = two_sources
    train = json.dumps([{"path": docs, "weight": 3, "max_pixels": SMALL}, {"path": photos, "min_pixels": LARGE}])
    out = tmp_path / "run"
    # In this process (torch is imported already), through the CLI's own entry point.
    code = main(["train", "tiny_vqa", f"data.train={train}", "data.max_length=1024",
                 "train.max_steps=3", "train.batch_size=3", "train.save_steps=0", "train.eval_strategy=never",
                 "eval.generate_at_end=false", f"train.output_dir={out}"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    lines = captured.out.splitlines()
    assert "train data: 9 rows -> 9 samples" in lines
    assert f"  data.train[0] ({docs}): 3 rows -> 3 samples" in lines
    assert f"  data.train[1] ({photos}): 6 rows -> 6 samples" in lines
    report = json.loads((out / "data_report.json").read_text())
    assert [(s["source"], s["weight"], s["max_pixels"]) for s in report["sources"]] == \
        [(docs, 3.0, SMALL), (photos, 1.0, None)]


@pytest.mark.slow  # loads the tiny model and generates (~15 s on 2 shared cores)
def test_eval_of_a_mixture_reads_every_source_and_names_them(two_sources, tmp_path):
    from mmlora.evaluation.run import run_eval

    docs, photos = two_sources
    r = mixture_recipe(docs, eval=[{"path": docs, "max_pixels": SMALL}, photos])
    r.train.output_dir, r.eval.max_new_tokens, r.eval.batch_size = str(tmp_path / "no_adapter"), 1, 9
    report, out = run_eval(r, output_dir=str(tmp_path / "eval"))
    assert len(report.items) == 9
    assert f"- data: {docs} + {photos}" in (out / "report.md").read_text().splitlines()
