"""Each request is encoded once: the image processor runs once per request in `mmlora infer`,
`mmlora chat` and `mmlora serve` (the context check and the generation share the encoding), and
the answers equal the evaluation path's (every sample encoded as it is generated). The engine
itself refuses a request past the model's context, before generating anything."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from mmlora.cli import main
from mmlora.config.paths import assets_dir
from mmlora.data.collate import generation_batch
from mmlora.evaluation.generate import generate_outputs
from mmlora.inference.context_length import ContextLengthError
from mmlora.inference.engine import GenerationSettings, InferenceEngine, Request, Turn, request_sample
from mmlora.models.processor import ImageTextProcessor

IMAGES = assets_dir() / "demo" / "images"
SMALL, TALL = IMAGES / "blue_circle_black_112x112.png", IMAGES / "blue_circle_gray_112x168.png"
LONG_TEXT = "word " * 950  # fits the tiny model's 4096 positions alone; not with 256 visual tokens


@pytest.fixture(scope="module")
def engine():
    return InferenceEngine.load(model="tiny/qwen2-vl", device="cpu")


@pytest.fixture
def image_calls(monkeypatch):
    """The number of images of every image-processor call, from any processor instance."""
    calls = []
    process = ImageTextProcessor.process_images

    def counted(self, images):
        calls.append(len(images))
        return process(self, images)

    monkeypatch.setattr(ImageTextProcessor, "process_images", counted)
    return calls


@pytest.fixture
def big_image(tmp_path, monkeypatch):
    """448x448 pixels: 256 visual tokens at the tiny Qwen2-VL's default bounds."""
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (448, 448), (200, 30, 30)).save(tmp_path / "big.png")
    return tmp_path / "big.png"


def reference(engine, request: Request, max_new_tokens: int) -> str:
    """The answer as the evaluation path generates it: the sample encoded in its batch."""
    settings = GenerationSettings(max_new_tokens=max_new_tokens).generate_kwargs()
    return generate_outputs(engine.model, engine.processor, [request_sample(request)], 1, first_line=False,
                            settings=settings)[0].text


def test_infer_processes_each_request_s_images_once_and_answers_as_before(engine, image_calls, big_image, capsys):
    rows = [{"image": str(SMALL), "prompt": "What color is the shape?"},
            {"image": "big.png", "prompt": LONG_TEXT},  # past the context: skipped after one encoding
            {"image": str(TALL), "prompt": "Describe the image."}]
    (big_image.parent / "q.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert main(["infer", "--model", "tiny/qwen2-vl", "--images", "q.jsonl", "--output", "preds.jsonl",
                 "--batch-size", "2", "--max-new-tokens", "16", "--allow-outside-root"]) == 1
    assert image_calls == [1, 1, 1]
    assert main(["infer", "--model", "tiny/qwen2-vl", "--image", str(TALL), "--prompt", "What is it?",
                 "--max-new-tokens", "6"]) == 0
    assert image_calls == [1, 1, 1, 1]
    single = capsys.readouterr().out
    lines = [json.loads(line) for line in (big_image.parent / "preds.jsonl").read_text().splitlines()]
    assert [line["prediction"] for line in lines] == [
        reference(engine, Request(row["prompt"], [row["image"]]), 16) for row in (rows[0], rows[2])]
    assert single == reference(engine, Request("What is it?", [str(TALL)]), 6) + "\n"


def test_chat_processes_each_turn_s_images_once_and_answers_as_before(engine, image_calls):
    from mmlora.inference.chat import run_chat

    out = io.StringIO()
    run_chat(engine, [f"/image {SMALL}", "What color is <image>?", "And its shape?"],
             GenerationSettings(max_new_tokens=5), out=out, note=io.StringIO())
    assert image_calls == [1, 1]  # one call per turn: the second turn re-reads the first turn's image
    first = reference(engine, Request("What color is <image>?", [str(SMALL)]), 5)
    history = [Turn("user", "What color is <image>?", [str(SMALL)]), Turn("assistant", first)]
    assert out.getvalue() == f"{first}\n{reference(engine, Request('And its shape?', history=history), 5)}\n"


def test_serve_processes_each_request_s_images_once_and_answers_as_before(api_server, image_calls):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{api_server.url}/v1", api_key="unused", max_retries=0)
    image = "data:image/png;base64," + base64.b64encode(TALL.read_bytes()).decode()
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}},
                                             {"type": "text", "text": "Describe it."}]}]
    whole = client.chat.completions.create(model=api_server.name, messages=messages, max_tokens=6, temperature=0)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
        model=api_server.name, messages=messages, max_tokens=6, temperature=0, stream=True) if chunk.choices)
    assert image_calls == [1, 1]
    expected = reference(api_server.app.state.batcher.engine, Request("<image>Describe it.", [str(TALL)]), 6)
    assert whole.choices[0].message.content == streamed == expected


def test_the_engine_refuses_a_request_past_the_context_before_generating(engine, big_image, monkeypatch):
    request = Request(LONG_TEXT, [str(big_image)], where="q.jsonl:2")
    tokens = generation_batch(engine.processor, [request_sample(request)])["input_ids"].shape[1]
    assert tokens + 16 > 4096 > tokens  # the prompt alone fits: the answer budget passes it
    generated = []
    monkeypatch.setattr(engine.model, "generate", lambda **kwargs: generated.append(kwargs))
    settings = GenerationSettings(max_new_tokens=16)
    message = (f"q.jsonl:2: the prompt takes {tokens} tokens (chat template and visual tokens included) and "
               "max_new_tokens is 16: more than the model's context of 4096 tokens; shorten the prompt, lower "
               "max_new_tokens or give smaller images")
    for call in (lambda: engine.answer([Request("Hi", [str(SMALL)]), request], settings),
                 lambda: engine.generate([request], settings),
                 lambda: next(engine.stream(request, settings)),
                 lambda: engine.answer([engine.encode(request)], settings)):
        with pytest.raises(ContextLengthError) as caught:
            call()
        assert str(caught.value) == message
        assert caught.value.overflow.prompt_tokens == tokens
    assert generated == []
    with pytest.raises(ContextLengthError):
        engine.check_context(engine.encode(request), settings)
    engine.check_context(engine.encode(request), GenerationSettings(max_new_tokens=4096 - tokens))  # fits
