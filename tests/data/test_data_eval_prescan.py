"""data.eval is pre-scanned with data.train, before any weights load: a bad eval row stops the
run at once (on_error=raise) or is skipped and reported in data_report.json (skip), and an
over-long eval row is dropped there instead of failing the first evaluation mid-run."""

import json

import pytest
from PIL import Image

from mmlora.config.loading import recipe_from_dict
from mmlora.data.scan import load_data_processor, prepare_training_data
from mmlora.errors import MmloraError

Q = "What color is the shape?"


@pytest.fixture
def data(tmp_path):
    """train.jsonl (4 good rows) and eval.jsonl: 2 good, 1 missing image, 1 over 128 tokens."""
    Image.new("RGB", (56, 56), "red").save(tmp_path / "a.png")
    Image.new("RGB", (448, 448), "blue").save(tmp_path / "big.png")  # 256 visual tokens
    train = [{"image": "a.png", "question": Q, "answer": "red"}] * 4
    evaluation = [{"image": "a.png", "question": Q, "answer": "red"},
                  {"image": "missing.png", "question": Q, "answer": "red"},
                  {"image": "big.png", "question": Q, "answer": "blue"},
                  {"image": "a.png", "question": Q, "answer": "red"}]
    for name, rows in (("train.jsonl", train), ("eval.jsonl", evaluation)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def recipe(data, *overrides, **fields):
    return recipe_from_dict({
        "task": "vqa", "model": {"name": "tiny/qwen2-vl", "max_pixels": 448 * 448},
        "data": {"train": str(data / "train.jsonl"), "eval": str(data / "eval.jsonl"), "max_length": 128, **fields},
    }, [f"train.output_dir={data / 'run'}", *overrides])


def test_a_bad_eval_row_stops_the_run_before_the_model_loads(data, monkeypatch):
    import mmlora.training.train

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded although data.eval is bad")

    monkeypatch.setattr(mmlora.training.train, "prepare_model", no_model)
    with pytest.raises(MmloraError, match=r"eval\.jsonl:2: image 'missing\.png' not found.*data\.on_error=skip"):
        mmlora.training.train.train(recipe(data, on_error="raise"))


def test_eval_skips_and_drops_are_in_data_report_json(data):
    prepared = prepare_training_data(recipe(data, on_error="skip"), load_data_processor(recipe(data).model),
                                     report_dir=data / "run")
    report = json.loads((data / "run" / "data_report.json").read_text())
    assert (report["split"], report["rows"], report["samples"]) == ("train", 4, 4)
    evaluation = report["eval"]
    assert (evaluation["split"], evaluation["rows"], evaluation["samples"]) == ("eval", 4, 2)
    assert evaluation["skipped"] == {"missing_image": 1} and evaluation["dropped_too_long"] == 1
    assert [p["where"].rsplit(":", 1)[1] for p in evaluation["problems"]] == ["2", "3"]
    samples, loss_dataset = prepared.eval_parts()
    assert [s.source.rsplit(":", 1)[1] for s in samples] == ["1", "4"] and len(loss_dataset) == 2
    assert len(loss_dataset[1].input_ids) <= 128


@pytest.mark.slow
def test_an_over_long_eval_row_no_longer_stops_training_at_the_first_evaluation(data):
    from mmlora.training.train import train

    result = train(recipe(data, "train.max_steps=2", "train.batch_size=2", "train.eval_strategy=steps",
                          "train.eval_steps=1", "train.logging_steps=1", "eval.generate_at_end=false",
                          on_error="skip"))
    assert [e["step"] for e in result.log_history if "eval_loss" in e] == [1, 2]
    assert (data / "run" / "adapter_model.safetensors").is_file()
    assert json.loads((data / "run" / "data_report.json").read_text())["eval"]["dropped_too_long"] == 1
