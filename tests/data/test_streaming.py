"""data.streaming: rows checked as training reaches them (nothing read up front), the same
training examples as the pre-scanned path, skips counted and logged as they come, mixtures drawn
by weight, hub datasets read as a `datasets.IterableDataset`."""

import collections
import itertools
import json
import logging
import subprocess
import sys

import datasets
import pytest
from PIL import Image

from mmlora.config.loading import recipe_from_dict
from mmlora.config.sources import data_sources
from mmlora.data.hub import load_hub_dataset
from mmlora.data.scan import TrainingDataset, scan_split
from mmlora.data.streaming import StreamingDataset
from mmlora.errors import MmloraError
from tests.data.test_hub_data import hub_repo  # noqa: F401 - the fixture

Q = "What color is it?"


@pytest.fixture
def rows_file(tmp_path):
    Image.new("RGB", (60, 40), "red").save(tmp_path / "red.png")
    rows = [{"image": "red.png", "question": Q, "answer": "red"},
            {"image": "gone.png", "question": Q, "answer": "blue"},          # missing_image
            {"image": "red.png", "question": Q, "answer": "crimson"},
            {"image": "red.png", "question": Q},                             # missing_answer
            {"image": "red.png", "question": Q + " word" * 400, "answer": "x"},  # too_long
            {"image": "red.png", "question": Q, "answer": "scarlet"}]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def recipe(train, **data):
    return recipe_from_dict({"model": {"name": "tiny/qwen2-vl", "max_pixels": 448 * 448}, "train": {"max_steps": 5},
                             "data": {"train": train, "streaming": True, "max_length": 256, **data}})


def test_streamed_examples_equal_the_pre_scanned_ones_and_skips_are_logged_as_they_come(rows_file, processor,
                                                                                          caplog):
    r = recipe(rows_file, on_error="skip")
    stream = iter(StreamingDataset(r.data.train, processor, r.data, seed=0))
    scan = scan_split(r.data.train, r.data, processor, "train", progress=False)
    scanned = TrainingDataset(scan, processor, r.data, seed=0)
    with caplog.at_level(logging.WARNING, logger="mmlora.data.streaming"):
        first = next(stream)
        assert not caplog.records  # nothing read past the first good row yet
        second = next(stream)  # row 2 (missing image) was met on the way
        assert [rec.getMessage() for rec in caplog.records] == [
            f"streaming: skipping {rows_file}:2: image 'gone.png' not found (looked at "
            f"{rows_file.rsplit('/', 1)[0]}/gone.png) (1 skipped so far: missing_image 1)"]
        rest = list(stream)
    messages = [rec.getMessage() for rec in caplog.records]
    assert messages[-1].endswith("(3 skipped so far: missing_answer 1, missing_image 1, too_long 1)")
    examples = [first, second, *rest]
    assert [e.input_ids for e in examples] == [scanned[i].input_ids for i in range(len(scanned))]
    assert [e.labels for e in examples] == [scanned[i].labels for i in range(len(scanned))]


def test_a_bad_row_stops_training_when_reached_with_on_error_raise(rows_file, processor):
    r = recipe(rows_file)
    stream = iter(StreamingDataset(r.data.train, processor, r.data, seed=0))
    assert next(stream).input_ids  # row 1 is trained before row 2 is even read
    with pytest.raises(MmloraError, match=r"rows.jsonl:2: image 'gone.png' not found .*set data.on_error=skip"):
        next(stream)


def test_nothing_is_read_before_iteration(tmp_path, processor):
    r = recipe(str(tmp_path / "later.jsonl"))
    dataset = StreamingDataset(r.data.train, processor, r.data, seed=0)  # the file does not exist yet
    (tmp_path / "later.jsonl").write_text("")
    with pytest.raises(MmloraError, match=r"^data.train \(.*later.jsonl\): no usable row in a whole pass \(no rows\)"):
        list(dataset)  # read now: an empty source is an error, not a run that trains nothing


def test_a_single_source_with_no_usable_row_stops_instead_of_training_nothing(tmp_path, processor):
    rows = [{"image": "gone.png", "question": Q, "answer": "red"}, {"image": "gone.png", "question": Q}]
    (tmp_path / "bad.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    r = recipe(str(tmp_path / "bad.jsonl"), on_error="skip")
    with pytest.raises(MmloraError, match=r"^data.train \(.*bad.jsonl\): no usable row in a whole pass "
                                          r"\(missing_answer 1, missing_image 1\); fix or remove it"):
        list(StreamingDataset(r.data.train, processor, r.data, seed=0))


def test_a_mixture_is_drawn_by_weight(rows_file, tmp_path, processor):
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"image": "red.png", "question": "Other?", "answer": "other"}) + "\n")
    r = recipe([{"path": rows_file, "weight": 3}, {"path": str(other), "weight": 1}], on_error="skip")
    examples = list(itertools.islice(StreamingDataset(r.data.train, processor, r.data, seed=0), 400))
    answers = [processor.decode([t for t in e.labels if t != -100]) for e in examples]
    assert set(answers) == {"red", "crimson", "scarlet", "other"}
    from_other = answers.count("other")
    # rows.jsonl yields 3 samples per 6 rows drawn, other.jsonl 1 per draw: expected 3:1 draws ->
    # samples 1.5 : 1 -> 160 of 400 from other; a binomial spread of 4 standard deviations
    assert abs(from_other - 160) < 4 * (400 * 0.4 * 0.6) ** 0.5


def test_hub_dataset_streams_through_datasets(hub_repo, processor):  # noqa: F811 - the fixture
    r = recipe("hf:ORG/NAME")
    assert isinstance(load_hub_dataset(data_sources(r.data.train)[0], streaming=True), datasets.IterableDataset)
    streamed = list(StreamingDataset(r.data.train, processor, r.data, seed=0))
    r.data.streaming = False
    scan = scan_split(r.data.train, r.data, processor, "train", progress=False)
    assert [e.input_ids for e in streamed] == [TrainingDataset(scan, processor, r.data, 0)[i].input_ids
                                               for i in range(3)]


def test_streaming_needs_max_steps():
    with pytest.raises(MmloraError, match="data.streaming=true needs train.max_steps"):
        recipe_from_dict({"data": {"train": "a.jsonl", "streaming": True}})


@pytest.mark.slow  # a training run (~20 s on 2 shared cores)
def test_streamed_training_run(rows_file, tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "mmlora", "train", "tiny_vqa", f"data.train={rows_file}", "data.streaming=true",
         "data.on_error=skip", "data.max_length=256", "lora.projector=frozen", "train.max_steps=4", "train.batch_size=2",
         "train.save_steps=0", "train.logging_steps=1", "train.eval_strategy=never", "eval.generate_at_end=false",
         f"train.output_dir={out}"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train data: streamed (data.streaming)" in result.stdout
    # The tower and projector are frozen, but a stream's size is unknown: its features are not cached.
    assert "vision cache: off (a streamed training set (data.streaming) is not cached)" in result.stdout
    losses = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len([row for row in losses if "loss" in row]) == 4
    # 3 usable samples per pass, batch 2, 4 steps: the stream is read again each pass, skips logged each time
    skipped = collections.Counter(line.split("skipping ", 1)[1].split(":")[0] for line in result.stderr.splitlines()
                                  if "streaming: skipping" in line)
    assert skipped and set(skipped) == {rows_file}
