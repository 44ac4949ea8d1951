"""The pre-scan on a corpus of bad inputs: exact counts with skip, located errors with raise,
no traceback anywhere, over-long samples dropped or truncated (never an image cut)."""

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from mmlora.config.loading import recipe_from_dict
from mmlora.config.schema import DataConfig, ModelConfig
from mmlora.data.collate import IGNORE_INDEX
from mmlora.data.scan import TrainingDataset, enforce_on_error, load_data_processor, scan_split
from mmlora.errors import MmloraError

Q = "What color is the shape?"
FIXABLE = ["png_named.jpg", "strip.png", "cmyk.jpg", "gray16.png", "rgba.png", "exif.jpg"]
BAD = {  # row -> the reason it is refused
    "missing_image": {"image": "missing.png", "question": Q, "answer": "red"},
    "empty_image_file": {"image": "zero.jpg", "question": Q, "answer": "red"},
    "corrupt_image": {"image": "truncated.jpg", "question": Q, "answer": "red"},
    "not_an_image": {"image": "text.jpg", "question": Q, "answer": "red"},
    "image_too_small": {"image": "tiny.png", "question": Q, "answer": "red"},
    "image_too_large": {"image": "bomb.png", "question": Q, "answer": "red"},
    "image_outside_root": {"image": "../outside.png", "question": Q, "answer": "red"},
    "missing_answer": {"image": "good.png", "question": Q},
    "empty_answer": {"image": "good.png", "question": Q, "answer": "   "},
    "malformed_json": b'{"image": "good.png", "question": "What color',
    "not_utf8": b'{"image": "good.png", "question": "Quelle couleur ? caf\xe9", "answer": "rouge"}',
}


def encode_line(row) -> bytes:
    return row if isinstance(row, bytes) else json.dumps(row).encode()


def write_images(root):
    from tests.data.test_data_images import png_with_header_size

    Image.new("RGB", (56, 56), (200, 20, 20)).save(root / "good.png")
    Image.new("RGB", (448, 448), (20, 20, 200)).save(root / "big.png")  # 256 visual tokens
    Image.new("RGB", (40, 30), "green").save(root / "png_named.jpg", format="PNG")
    Image.new("RGB", (1, 400), "black").save(root / "strip.png")
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(root / "cmyk.jpg")
    Image.fromarray(np.full((30, 30), 40000, dtype=np.uint16)).save(root / "gray16.png")
    Image.new("RGBA", (30, 30), (255, 0, 0, 100)).save(root / "rgba.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (60, 30), "blue").save(root / "exif.jpg", exif=exif)
    (root / "zero.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("not an image")
    noise = io.BytesIO()
    Image.effect_noise((96, 96), 60).convert("RGB").save(noise, "JPEG")
    (root / "truncated.jpg").write_bytes(noise.getvalue()[: len(noise.getvalue()) // 2])
    Image.new("RGB", (1, 1)).save(root / "tiny.png")
    png_with_header_size(root / "bomb.png", 20_000, 20_000)
    Image.new("RGB", (30, 30)).save(root.parent / "outside.png")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """data/corpus.jsonl: 1 good row, 6 fixable images, 1 over-long sample, 11 bad rows."""
    root = tmp_path_factory.mktemp("corpus") / "data"
    root.mkdir()
    write_images(root)
    lines = [{"image": "good.png", "question": Q, "answer": "red"}]
    lines += [{"image": name, "question": Q, "answer": "fine"} for name in FIXABLE]
    lines += [{"image": "big.png", "question": Q, "answer": "blue"}] + list(BAD.values())
    (root / "corpus.jsonl").write_bytes(b"\n".join(encode_line(r) for r in lines) + b"\n")
    return root


@pytest.fixture(scope="module")
def processor():
    return load_data_processor(ModelConfig(name="tiny/qwen2-vl", max_pixels=448 * 448))


def recipe_data(path, **data) -> dict:
    return {"task": "vqa", "model": {"name": "tiny/qwen2-vl", "max_pixels": 448 * 448},
            "data": {"train": str(path), "max_length": 128, **data}}


def test_skip_counts_every_reason_exactly(corpus, processor):
    scan = scan_split(corpus / "corpus.jsonl", DataConfig(train="x", max_length=128), processor, progress=False)
    assert scan.rows == 1 + len(FIXABLE) + 1 + len(BAD)
    assert scan.skipped() == {reason: 1 for reason in sorted(BAD)}
    assert [p.reason for p in scan.too_long] == ["too_long"]  # big.png: 256 visual tokens > 128
    assert scan.too_long[0].where == f"{corpus / 'corpus.jsonl'}:8"
    assert len(scan.samples) == 1 + len(FIXABLE)
    enforce_on_error(scan, "skip")  # does not raise


@pytest.mark.parametrize("reason", sorted(BAD))
def test_raise_names_file_row_and_reason(tmp_path, processor, reason):
    (tmp_path / "data").mkdir()
    write_images(tmp_path / "data")
    path = tmp_path / "data" / "one_bad.jsonl"
    path.write_bytes(encode_line({"image": "good.png", "question": Q, "answer": "red"}) + b"\n"
                     + encode_line(BAD[reason]) + b"\n")
    scan = scan_split(path, DataConfig(train="x"), processor, progress=False)
    assert [p.reason for p in scan.problems] == [reason]
    with pytest.raises(MmloraError) as info:
        enforce_on_error(scan, "raise")
    message = str(info.value)
    assert message.startswith(f"{path}:2: ") and "data.on_error=skip" in message


def test_raise_stops_before_the_model_loads(corpus, monkeypatch, tmp_path):
    import mmlora.training.train

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded although the data is bad")

    monkeypatch.setattr(mmlora.training.train, "prepare_model", no_model)
    recipe = recipe_from_dict(recipe_data(corpus / "corpus.jsonl", on_error="raise"),
                              [f"train.output_dir={tmp_path / 'run'}"])
    with pytest.raises(MmloraError, match=r"corpus\.jsonl:9: image 'missing\.png' not found.*and 10 more bad row"):
        mmlora.training.train.train(recipe)
    assert not (tmp_path / "run" / "data_report.json").exists()


def test_truncate_cuts_answers_after_the_images_never_an_image(tmp_path, processor):
    Image.new("RGB", (56, 56)).save(tmp_path / "a.png")
    Image.new("RGB", (448, 448)).save(tmp_path / "big.png")
    long_answer = " ".join(["red circle"] * 40)
    rows = [{"image": "a.png", "question": Q, "answer": long_answer},
            {"image": "big.png", "question": Q, "answer": "blue"},
            {"image": "a.png", "question": Q, "answer": "red"}]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = DataConfig(train="x", max_length=60, too_long="truncate")
    scan = scan_split(tmp_path / "t.jsonl", cfg, processor, progress=False)
    assert scan.truncated == 1 and [p.where[-1] for p in scan.too_long] == ["2"]  # the big image is dropped
    dataset = TrainingDataset(scan, processor, cfg, seed=0)
    truncated, short = dataset[0], dataset[1]
    assert len(truncated.input_ids) == 60 and len(short.input_ids) < 60
    for example, expected_tokens in ((truncated, 4), (short, 4)):  # 56x56 px -> 4 visual tokens, all kept
        assert example.input_ids.count(processor.image_token_id) == expected_tokens
        assert int(example.image_grid_thw.prod()) // 4 == expected_tokens
    trained = processor.decode([t for t, l in zip(truncated.input_ids, truncated.labels) if l != IGNORE_INDEX])
    assert long_answer.startswith(trained) and len(trained) > 10
    drop = scan_split(tmp_path / "t.jsonl", DataConfig(train="x", max_length=60), processor, progress=False)
    assert drop.truncated == 0 and [p.where[-1] for p in drop.too_long] == ["1", "2"]


def test_random_caption_is_drawn_per_epoch_reproducibly(tmp_path, processor):
    Image.new("RGB", (56, 56)).save(tmp_path / "a.png")
    (tmp_path / "c.jsonl").write_text(json.dumps({"image": "a.png", "captions": ["red one", "blue two"]}) + "\n")
    cfg = DataConfig(train="x", captions_per_image="random")
    dataset = TrainingDataset(scan_split(tmp_path / "c.jsonl", cfg, processor, progress=False), processor, cfg, 0)

    def answer(epoch):
        dataset.set_epoch(epoch)
        example = dataset[0]
        return processor.decode([t for t, l in zip(example.input_ids, example.labels) if l != IGNORE_INDEX],
                                skip_special_tokens=False)

    draws = [answer(epoch) for epoch in range(12)]
    assert set(draws) == {"red one<|im_end|>", "blue two<|im_end|>"}
    assert draws == [answer(epoch) for epoch in range(12)]


def mmlora_cli(*args):
    return subprocess.run([sys.executable, "-m", "mmlora", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_on_the_corpus_never_prints_a_traceback(corpus, tmp_path):
    recipe = tmp_path / "corpus.yaml"
    recipe.write_text(yaml.safe_dump(recipe_data(corpus / "corpus.jsonl")))
    check = mmlora_cli("data", "check", str(recipe), "--json")
    assert check.returncode == 1 and "Traceback" not in check.stderr  # training would refuse it
    assert json.loads(check.stdout)["train"]["skipped"] == {reason: 1 for reason in sorted(BAD)}
    train = mmlora_cli("train", str(recipe), f"train.output_dir={tmp_path / 'run'}")
    assert train.returncode == 2 and "Traceback" not in train.stderr
    errors = [line for line in train.stderr.splitlines() if line.startswith("mmlora: error:")]
    assert len(errors) == 1 and "corpus.jsonl:9" in errors[0] and "not found" in errors[0]


@pytest.mark.slow
def test_skip_run_trains_and_reports_exact_counts(corpus, tmp_path):
    """max_length below one sample's image tokens: the run completes and reports the drop."""
    from mmlora.training.train import train

    out = tmp_path / "run"
    recipe = recipe_from_dict(recipe_data(corpus / "corpus.jsonl", on_error="skip"), [
        f"train.output_dir={out}", "train.max_steps=2", "train.batch_size=4", "train.logging_steps=1"])
    result = train(recipe)
    assert result.log_history and (out / "adapter_model.safetensors").is_file()
    report = json.loads((out / "data_report.json").read_text())
    assert report["skipped"] == {reason: 1 for reason in sorted(BAD)}
    assert (report["rows"], report["samples"], report["dropped_too_long"]) == (19, 7, 1)


def test_load_samples_checks_images_too(corpus):
    """Evaluation data (load_samples, no processor) gets the same row and image checks."""
    from mmlora.data.loading import load_samples

    kept = load_samples(corpus / "corpus.jsonl", DataConfig(train="x", on_error="skip"))
    assert len(kept) == 1 + len(FIXABLE) + 1  # no length limit without a processor: big.png stays
    with pytest.raises(MmloraError, match=r"corpus\.jsonl:9: image 'missing\.png' not found"):
        load_samples(corpus / "corpus.jsonl", DataConfig(train="x"))
    corrupt_only = corpus / "corrupt_only.jsonl"
    corrupt_only.write_text(json.dumps(BAD["corrupt_image"]) + "\n")
    with pytest.raises(MmloraError, match=r"corrupt_only\.jsonl:1: cannot read image .*truncated"):
        load_samples(corrupt_only, DataConfig(train="x"))
