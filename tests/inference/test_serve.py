"""`mmlora serve` (transformers backend): a real uvicorn server on a free local port, asked with
the real `openai` client; answers equal `mmlora infer`'s, streams join to the same text, errors
come in OpenAI's shape, concurrent requests are batched and answered as alone."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from mmlora.cli import main  # noqa: E402
from mmlora.config.paths import assets_dir  # noqa: E402
from mmlora.data.collate import generation_batch  # noqa: E402
from mmlora.inference.engine import GenerationSettings, Request, Turn  # noqa: E402

IMAGES = assets_dir() / "demo" / "images"
SERVED = "my-tiny"  # tests/inference/conftest.py serves the model under this name


def data_url(path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def ask(text: str, image=None) -> list[dict]:
    content = ([{"type": "image_url", "image_url": {"url": data_url(image)}}] if image else [])
    return [{"role": "user", "content": content + [{"type": "text", "text": text}]}]


@pytest.fixture(scope="module")
def server(api_server):
    return api_server.url, api_server.app


@pytest.fixture(scope="module")
def client(api_server):
    return openai.OpenAI(base_url=f"{api_server.url}/v1", api_key="unused", max_retries=0)


def infer_cli(model_dir, image, prompt: str, max_new_tokens: int) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["infer", "--model", str(model_dir), "--image", str(image), "--prompt", prompt,
                     "--max-new-tokens", str(max_new_tokens)]) == 0
    return out.getvalue().rstrip("\n")


def test_answers_equal_mmlora_infer_and_streams_join_to_them(server, client, api_server):
    model_dir, app = api_server.model_dir, api_server.app
    assert app.state.batcher.engine.processor.image_processor.size["longest_edge"] == api_server.max_pixels
    assert [m.id for m in client.models.list().data] == [SERVED]
    image = IMAGES / "blue_circle_black_112x168.png"  # above the trained bounds: resized as trained
    prompt = "What color is the shape?"
    expected = infer_cli(model_dir, image, prompt, 24)
    assert expected

    reply = client.chat.completions.create(model=SERVED, messages=ask(prompt, image), max_tokens=24)
    assert reply.choices[0].message.content == expected
    assert reply.choices[0].message.role == "assistant" and reply.object == "chat.completion"

    chunks = list(client.chat.completions.create(model=SERVED, messages=ask(prompt, image), max_tokens=24,
                                                 stream=True))
    texts = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert len(texts) > 1 and "".join(texts) == expected
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")

    with urllib.request.urlopen(urllib.request.Request(  # the raw stream ends with [DONE]
            f"{server[0]}/v1/chat/completions", json.dumps(
                {"model": SERVED, "messages": ask(prompt, image), "max_tokens": 4, "stream": True}).encode(),
            {"Content-Type": "application/json"})) as response:
        events = [line for line in response.read().decode().split("\n\n") if line]
    assert response.headers["content-type"].startswith("text/event-stream")
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: {") for e in events[:-1])
    assert not any("usage" in json.loads(e[len("data: "):]) for e in events[:-1])  # not asked for


def test_answers_report_their_token_usage_streamed_or_not(server, client):
    engine = server[1].state.batcher.engine
    image, prompt = IMAGES / "blue_circle_black_112x112.png", "What color is the shape?"
    reply = client.chat.completions.create(model=SERVED, messages=ask(prompt, image), max_tokens=5)
    # The prompt as the model sees it: chat template and the image's visual tokens (112x112 px in
    # 14 px patches, merged 2x2: 16 <|image_pad|> tokens).
    prompt_ids = generation_batch(engine.processor, [engine._sample(Request(f"<image>{prompt}", [image]))])["input_ids"]
    assert int((prompt_ids == engine.processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum()) == 16
    usage = reply.usage
    assert usage.prompt_tokens == prompt_ids.shape[1]
    assert 1 <= usage.completion_tokens <= 5 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    if reply.choices[0].finish_reason == "length":  # cut at max_tokens, else ended by the turn end
        assert usage.completion_tokens == 5
    alone = engine.generate([Request(f"<image>{prompt}", [image])], GenerationSettings(max_new_tokens=5))[0]
    assert (alone.text, alone.prompt_tokens, alone.completion_tokens) == (
        reply.choices[0].message.content, usage.prompt_tokens, usage.completion_tokens)

    chunks = list(client.chat.completions.create(model=SERVED, messages=ask(prompt, image), max_tokens=5,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == usage.model_dump()
    assert all(chunk.usage is None for chunk in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == reply.choices[0].finish_reason
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == reply.choices[0].message.content
    with pytest.raises(openai.BadRequestError, match="only allowed when 'stream' is true"):
        client.chat.completions.create(model=SERVED, messages=ask(prompt), stream_options={"include_usage": True})


def test_system_message_and_earlier_turns_reach_the_model(server, client):
    engine = server[1].state.batcher.engine
    first, second = IMAGES / "blue_circle_gray_112x112.png", IMAGES / "blue_circle_black_140x112.png"
    messages = [
        {"role": "system", "content": "Answer in one word."},
        *ask("What shape is it?", first),
        {"role": "assistant", "content": "A circle."},
        {"role": "user", "content": [{"type": "text", "text": "Compare"}, {"type": "image_url",
                                     "image_url": {"url": data_url(second)}}, {"type": "text", "text": "with it."}]},
    ]
    reply = client.chat.completions.create(model=SERVED, messages=messages, max_tokens=6)
    reference = Request("Compare<image>with it.", [second], system="Answer in one word.",
                        history=[Turn("user", "<image>What shape is it?", [first]), Turn("assistant", "A circle.")])
    expected = engine.answer([reference], GenerationSettings(max_new_tokens=6))[0]
    assert reply.choices[0].message.content == expected


def test_concurrent_requests_are_answered_as_alone(client, server):
    questions = [(f"What color is the {what}?", IMAGES / name) for what, name in [
        ("shape", "blue_circle_black_112x112.png"), ("background", "blue_circle_gray_112x168.png"),
        ("circle", "blue_circle_black_140x112.png"), ("picture", "blue_circle_gray_112x112.png")]]

    def one(question):
        reply = client.chat.completions.create(model=SERVED, messages=ask(*question), max_tokens=6)
        return reply.choices[0].message.content

    alone = [one(q) for q in questions]
    with ThreadPoolExecutor(len(questions)) as pool:
        together = list(pool.map(one, questions))
    assert together == alone


def test_the_batcher_answers_waiting_requests_in_one_batch(server):
    batcher = server[1].state.batcher
    engine = batcher.engine
    requests = [Request(f"Question {i}: what color?", [IMAGES / "blue_circle_black_112x112.png"]) for i in range(4)]
    settings = GenerationSettings(max_new_tokens=5)
    alone = [engine.answer([r], settings)[0] for r in requests]
    before = len(batcher.batch_sizes)
    with engine._lock:  # the model is busy: the four requests wait together
        futures = [batcher.submit(r, settings) for r in requests]
    assert [f.result(timeout=120).text for f in futures] == alone
    assert max(batcher.batch_sizes[before:]) > 1 and sum(batcher.batch_sizes[before:]) == 4


def post(server, body, path="/v1/chat/completions") -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(server[0] + path, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.parametrize(("body", "status", "param", "message"), [
    ({"model": "other", "messages": ask("Hi")}, 404, "model", "The model 'other' does not exist"),
    ({"messages": ask("Hi") + [{"role": "assistant", "content": "Hello"}]}, 400, "messages", "the last message must be a user"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "/etc/hostname"}}]}]},
     400, "messages", "must be a data URL"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/a.png"}}]}]},
     400, "messages", "image URLs are not fetched by this server"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}}]}]},
     400, "messages", "not valid base64"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,"
                                                                                   + base64.b64encode(b"not a png").decode()}}]}]},
     400, "messages", "not an image file"),
    ({"messages": ask("Hi"), "stop": ["\n"]}, 400, "stop", "'stop' is not supported"),
    ({"messages": ask("Hi"), "n": 2}, 400, "n", "'n' must be 1"),
    ({"messages": ask("Hi"), "response_format": {"type": "json_object"}}, 400, "response_format", "not supported"),
    ({"messages": ask("Hi"), "temperature": 5}, 400, "temperature", "'temperature' must be a number between 0"),
    ({"messages": ask("Hi"), "top_p": 0}, 400, "top_p", "'top_p' must be above 0"),
    ({"messages": ask("Hi"), "max_tokens": 0}, 400, "max_tokens", "'max_tokens' must be an integer between 1"),
    ({"messages": ask("<image> and <image>")}, 400, "messages", "2 <image> marker(s) but there are 0 image(s)"),
    ({"messages": [{"role": "tool", "content": "x"}]}, 400, "messages", "role must be system, user or assistant"),
    (b"{not json", 400, None, "not valid JSON"),
    (b'{"messages": ' + b"[" * 100000 + b"]" * 100000 + b"}", 400, None, "not valid JSON"),  # deep nesting
    (b'{"messages": [], "max_tokens": ' + b"9" * 5000 + b"}", 400, None, "not valid JSON"),  # a 5000-digit number
    ({"messages": ask("Hi"), "max_token": 2}, 400, "max_token",
     "Unrecognized request argument supplied: max_token; did you mean 'max_tokens'?"),
    ({"messages": ask("Hi"), "frequency_penalty": 1.5}, 400, "frequency_penalty", "other than 0 is not supported"),
    ({"messages": ask("a\ud800b")}, 400, "messages", "messages[0].content[0].text: holds a lone surrogate \\ud800"),
    ({"messages": ask("a\U000F0001b")}, 400, "messages", "the last user message: holds characters of Unicode's "
                                                           "Supplementary Private Use Area-A"),
    ({"messages": ask("word " * 1100), "max_tokens": 1}, 400, "messages",  # the tiny model's context: 4096
     "the prompt takes 4429 tokens (chat template and visual tokens included) and max_tokens is 1: more than the "
     "model's context of 4096 tokens; shorten the conversation, lower max_tokens or send smaller images."),
    # 4060 text tokens fit alone; the chat template and the image's 16 visual tokens (at the served bounds) do not
    ({"messages": ask("word " * 1000 + "x" * 60, IMAGES / "blue_circle_black_112x112.png"), "max_tokens": 1}, 400,
     "messages", "the prompt takes 4107 tokens (chat template and visual tokens included)"),
    ({"messages": ask("Hi"), "max_tokens": 1 << 20}, 400, "messages", "more than the model's context of 4096 tokens"),
])
def test_errors_answer_in_openai_shape(server, body, status, param, message):
    code, answer = post(server, body)
    assert code == status, answer
    assert set(answer) == {"error"} and set(answer["error"]) == {"message", "type", "param", "code"}
    assert answer["error"]["param"] == param and message in answer["error"]["message"], answer
    assert answer["error"]["type"] == "invalid_request_error"
    assert post(server, {"messages": ask("Hi"), "max_tokens": 1})[0] == 200  # and the server serves on


def test_client_raises_the_matching_openai_errors(client, server):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="other", messages=ask("Hi"))
    with pytest.raises(openai.BadRequestError, match="must be a data URL"):
        client.chat.completions.create(model=SERVED, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "file:///etc/hostname"}}]}])
    with pytest.raises(openai.BadRequestError, match="'presence_penalty' other than 0 is not supported"):
        client.chat.completions.create(model=SERVED, messages=ask("Hi"), presence_penalty=0.5)
    with pytest.raises(openai.BadRequestError, match="Unrecognized request argument supplied: max_token"):
        client.chat.completions.create(model=SERVED, messages=ask("Hi"), extra_body={"max_token": 2})
    code, answer = post(server, {}, "/v1/nothing-here")
    assert code == 404 and answer["error"]["type"] == "not_found_error"
    assert answer["error"]["message"].startswith("Not Found: POST /v1/nothing-here. This server answers GET /v1/models")
    code, answer = post(server, {}, "/v1/models")
    assert code == 405 and "Method Not Allowed: POST /v1/models" in answer["error"]["message"]


def png_data_url(width: int, height: int) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "red").save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_images_are_checked_as_training_images_are(server, monkeypatch):
    from PIL import Image

    from mmlora.inference import openai_protocol

    def sent(url: str) -> tuple[int, dict]:
        return post(server, {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Hi"}]}], "max_tokens": 1})

    assert sent(png_data_url(32, 32))[0] == 200
    code, answer = sent(png_data_url(4, 4))
    assert (code, answer["error"]["code"]) == (400, "image_too_small"), answer
    assert "under 8 px on their longer side are refused" in answer["error"]["message"]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # 32x32 is then above twice the bomb limit
    code, answer = sent(png_data_url(32, 32))
    assert (code, answer["error"]["code"]) == (400, "image_too_large"), answer
    monkeypatch.setattr(openai_protocol, "MAX_DOWNLOAD_BYTES", 64)
    code, answer = sent(png_data_url(32, 32))
    assert (code, answer["error"]["code"]) == (400, "image_too_large") and "larger than" in answer["error"]["message"]


def test_serve_names_the_extra_to_install_when_fastapi_is_missing(monkeypatch, capsys, api_server):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fastapi" else real(name, *a))
    assert main(["serve", "--model", str(api_server.model_dir), "--backend", "transformers"]) == 2
    assert "mmlora serve needs fastapi: pip install 'mmlora[serve]'" in capsys.readouterr().err


def test_a_taken_port_is_a_one_line_error_before_the_model_loads(capsys):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["serve", "--model", "no/such-model", "--backend", "transformers", "--port", str(port)]) == 2
    assert f"mmlora: error: cannot listen on 127.0.0.1:{port} (Address already in use): choose another --port" \
        in capsys.readouterr().err


@pytest.mark.slow
def test_the_serve_command_starts_a_server_and_stops_on_ctrl_c(api_server, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path / "serve.log"
    with log.open("w") as sink:
        process = subprocess.Popen([sys.executable, "-m", "mmlora", "serve", "--model", str(api_server.model_dir),
                                    "--port", str(port), "--served-model-name", "m", "--ui"],
                                   stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        try:
            deadline = time.monotonic() + 180
            while True:
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                with contextlib.suppress(OSError):
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as response:
                        assert [m["id"] for m in json.loads(response.read())["data"]] == ["m"]
                    break
                time.sleep(0.5)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                assert "<title>mmlora: m</title>" in response.read().decode()
        finally:
            process.send_signal(signal.SIGINT)
            code = process.wait(timeout=60)
    text = log.read_text()
    assert code == 0, text
    assert "mmlora serve: backend transformers (" in text
    assert f"'m' on cpu at http://127.0.0.1:{port}/v1 (OpenAI API); try-it page at http://127.0.0.1:{port}/" in text


def test_sampling_settings_reach_the_model(client, api_server):
    engine = api_server.app.state.batcher.engine
    image = IMAGES / "blue_circle_black_112x112.png"
    sampled = [client.chat.completions.create(model=SERVED, messages=ask("Describe it.", image), max_tokens=8,
                                              temperature=1.5, top_p=0.9, seed=3).choices[0].message.content
               for _ in range(2)]
    settings = GenerationSettings(max_new_tokens=8, temperature=1.5, top_p=0.9, seed=3)
    assert sampled[0] == sampled[1] == engine.answer([Request("<image>Describe it.", [image])], settings)[0]


def test_http_image_urls_are_fetched_only_when_allowed(tmp_path, monkeypatch):
    import functools
    import http.server

    from PIL import Image

    from mmlora.inference.openai_protocol import ApiError, decode_image_url

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # the data layer caches fetched images there
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(IMAGES))
    handler.log_message = lambda *args: None
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as site:
        threading.Thread(target=site.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{site.server_address[1]}/blue_circle_black_112x168.png"
        with pytest.raises(ApiError, match="image URLs are not fetched by this server") as refused:
            decode_image_url(url, "m", allow_urls=False)
        assert refused.value.code == "url_not_allowed"
        fetched = decode_image_url(url, "m", allow_urls=True)
        site.shutdown()
    expected = Image.open(IMAGES / "blue_circle_black_112x168.png").convert("RGB")
    assert fetched.size == expected.size and fetched.tobytes() == expected.tobytes()
    with pytest.raises(ApiError, match="got 'file:///etc/hostname'"):
        decode_image_url("file:///etc/hostname", "m", allow_urls=True)
