"""`mmlora infer` against the model's context: a prompt (chat template, text and visual tokens)
that with --max-new-tokens passes the tiny model's 4096 positions is a one-line error for one
`--image` request and a counted, located skip in a JSONL batch, which `--resume` retries; the
prompt is counted as generation encodes it."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from mmlora.cli import main
from mmlora.config.paths import assets_dir
from mmlora.inference.engine import GenerationSettings, InferenceEngine, Request, Turn

SMALL = assets_dir() / "demo" / "images" / "blue_circle_black_112x112.png"
LONG_TEXT = "word " * 950  # 3800 tokens of the tiny tokenizer: fits 4096 with 16 new tokens, alone


@pytest.fixture(scope="module")
def engine():
    return InferenceEngine.load(model="tiny/qwen2-vl", device="cpu")


@pytest.fixture
def big_image(tmp_path, monkeypatch):
    """448x448 pixels: 256 visual tokens at the tiny Qwen2-VL's default bounds (16 for SMALL)."""
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (448, 448), (200, 30, 30)).save(tmp_path / "big.png")
    return tmp_path / "big.png"


def generated_prompt_tokens(engine, request: Request) -> int:
    """The prompt length the generation itself reports (its attention mask), the reference."""
    return engine.generate([request], GenerationSettings(max_new_tokens=1))[0].prompt_tokens


def test_the_prompt_is_counted_as_generation_encodes_it(engine, big_image):
    request = Request("Compare <image> with <image>.", [str(big_image), str(SMALL)], system="Be brief.",
                      history=[Turn("user", "What is <image>?", [str(SMALL)]), Turn("assistant", "A circle.")])
    assert engine.prompt_tokens(request) == generated_prompt_tokens(engine, request)
    text_only = Request("Compare them.", [], system=request.system)
    assert engine.prompt_tokens(text_only) == generated_prompt_tokens(engine, text_only)


def test_one_prompt_past_the_context_is_one_line_error_before_generating(engine, big_image, capsys):
    # The text alone and 16 new tokens fit; the image's visual tokens push it past 4096.
    expected = generated_prompt_tokens(engine, Request(LONG_TEXT, [str(big_image)]))
    assert expected + 16 > 4096 >= generated_prompt_tokens(engine, Request(LONG_TEXT, [])) + 16
    code = main(["infer", "--model", "tiny/qwen2-vl", "--image", "big.png", "--prompt", LONG_TEXT,
                 "--max-new-tokens", "16"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.strip().splitlines()[-1] == (
        f"mmlora: error: the prompt takes {expected} tokens (chat template and visual tokens included) and "
        "--max-new-tokens is 16: more than the model's context of 4096 tokens; shorten --prompt or --system, "
        "lower --max-new-tokens or give smaller images (--max-pixels)")


def test_a_batch_skips_a_line_past_the_context_and_resume_answers_it_once_it_fits(engine, big_image, capsys):
    rows = [{"id": "a-1", "image": SMALL.name, "prompt": "What color is the shape?"},
            {"id": 2, "image": "big.png", "prompt": LONG_TEXT},
            {"id": 3.5, "image": SMALL.name, "question": "Describe the image."}]
    (big_image.parent / SMALL.name).write_bytes(SMALL.read_bytes())
    (big_image.parent / "q.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    args = ["infer", "--model", "tiny/qwen2-vl", "--images", "q.jsonl", "--output", "preds.jsonl",
            "--batch-size", "3"]
    assert main(args + ["--max-new-tokens", "16"]) == 1
    log = capsys.readouterr().err
    expected = generated_prompt_tokens(engine, Request(LONG_TEXT, [str(big_image)]))
    assert (f"mmlora: skipped q.jsonl:2: the prompt takes {expected} tokens (chat template and visual tokens "
            "included) and --max-new-tokens is 16: more than the model's context of 4096 tokens; shorten its "
            "prompt, lower --max-new-tokens or give smaller images (--max-pixels)\n") in log
    assert log.strip().splitlines()[-1] == "mmlora: answered 2 request(s) into preds.jsonl; skipped 1 (see above)"
    lines = [json.loads(line) for line in (big_image.parent / "preds.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in line.items() if k != "prediction"} for line in lines] == [
        rows[0], {"id": 3.5, "image": SMALL.name, "prompt": "Describe the image."}]
    assert list(lines[0]) == ["id", "image", "prompt", "prediction"]  # the id first, as the user gave it

    fits = 4096 - expected  # the most new tokens the long line can have
    assert main(args + ["--max-new-tokens", str(fits), "--resume"]) == 0
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "mmlora: answered 1 request(s) into preds.jsonl; 2 already in the file")
    lines = [json.loads(line) for line in (big_image.parent / "preds.jsonl").read_text().splitlines()]
    assert [line["id"] for line in lines] == ["a-1", 3.5, 2]


def test_a_max_new_tokens_that_fills_the_context_is_one_line_not_a_skip_per_request(big_image, capsys):
    (big_image.parent / "q.jsonl").write_text('{"image": "big.png", "prompt": "Hi"}\n' * 3)
    code = main(["infer", "--model", "tiny/qwen2-vl", "--images", "q.jsonl", "--output", "preds.jsonl",
                 "--max-new-tokens", "4096"])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "mmlora: error: --max-new-tokens 4096 leaves no room for a prompt in the model's context of 4096 tokens; "
        "lower it.")
    assert (big_image.parent / "preds.jsonl").read_text() == ""
