"""The inference engine: batched answers equal one-at-a-time answers, streaming equals answering,
image references follow the data layer's rules."""

from __future__ import annotations

import pytest

from mmlora.data.collate import generation_batch
from mmlora.data.samples import RowError
from mmlora.inference.engine import (
    GenerationSettings, InferenceEngine, Request, Turn, request_sample, resolve_images,
)

IMAGES = "asset://demo/images"


@pytest.fixture
def engine(tiny):
    return InferenceEngine(tiny.model, tiny.processor, name="tiny/qwen2-vl")


def mixed_requests() -> list[Request]:
    """Images of three sizes, a system prompt, two images in one prompt, a prior turn."""
    return [
        Request("What color is the shape?", [f"{IMAGES}/blue_circle_black_112x112.png"]),
        Request("Describe the image in detail, please.", [f"{IMAGES}/blue_circle_black_112x168.png"],
                system="Answer in one word."),
        Request("Compare <image> with <image>.", [f"{IMAGES}/blue_circle_black_140x112.png",
                                                  f"{IMAGES}/blue_circle_gray_112x112.png"]),
        Request("And the background?", [], history=[
            Turn("user", "What shape is it?", [f"{IMAGES}/blue_circle_gray_112x168.png"]),
            Turn("assistant", "A circle."),
        ]),
    ]


def test_batched_answers_equal_one_at_a_time_and_prompts_are_left_padded(engine):
    requests = mixed_requests()
    samples = [engine._sample(r) for r in requests]
    batch = generation_batch(engine.processor, samples)
    lengths = batch["attention_mask"].sum(dim=1)
    assert len(set(lengths.tolist())) == len(requests), "prompts of different lengths"
    assert bool((batch["attention_mask"][:, -1] == 1).all())  # every prompt ends at the last position
    shorter = lengths < lengths.max()
    assert bool((batch["input_ids"][shorter, 0] == engine.processor.pad_token_id).all())

    settings = GenerationSettings(max_new_tokens=6)
    together = engine.answer(requests, settings, batch_size=len(requests))
    alone = [engine.answer([r], settings)[0] for r in requests]
    assert together == alone
    assert all(together), "the untrained tiny model still says something"


def test_stream_yields_the_same_text_as_answer(engine):
    request = mixed_requests()[1]
    settings = GenerationSettings(max_new_tokens=8)
    chunks = list(engine.stream(request, settings))
    assert len(chunks) > 1
    assert "".join(chunks) == engine.answer([request], settings)[0]


def test_a_seed_makes_sampling_repeatable(engine):
    request = mixed_requests()[0]
    settings = GenerationSettings(max_new_tokens=8, temperature=1.5, seed=3)
    assert settings.generate_kwargs() == {"max_new_tokens": 8, "num_beams": 1, "do_sample": True,
                                          "temperature": 1.5, "top_p": 1.0}
    assert engine.answer([request], settings) == engine.answer([request], settings)


def test_request_becomes_system_history_then_prompt():
    request = mixed_requests()[3]
    request.system = "Be brief."
    sample = request_sample(request)
    assert [m["role"] for m in sample.messages] == ["system", "user", "assistant", "user"]
    assert sample.images == [f"{IMAGES}/blue_circle_gray_112x168.png"]
    assert sample.messages[1]["content"][0] == {"type": "image"}


def test_bad_references_name_the_request(tmp_path):
    with pytest.raises(RowError, match=r"^q\.jsonl:3: image 'http://x/a\.png' is a URL; fetching URLs is off \(--allow-urls turns it on\)"):
        resolve_images(["http://x/a.png"], "q.jsonl:3")
    with pytest.raises(RowError, match=r"^q\.jsonl:4: image 'nope\.png' not found"):
        resolve_images(["nope.png"], "q.jsonl:4", root=tmp_path)
    with pytest.raises(RowError, match=r"^q\.jsonl:5: image '\.\./a\.png' is outside .* \(--allow-outside-root allows it\)"):
        resolve_images(["../a.png"], "q.jsonl:5", root=tmp_path)
    with pytest.raises(RowError, match=r"^q\.jsonl:6: prompt has 2 <image> marker\(s\) but there is 1 image"):
        request_sample(Request("<image> and <image>", ["a.png"], where="q.jsonl:6"))
    shipped = resolve_images([f"{IMAGES}/blue_circle_black_112x112.png"], "cli", root=tmp_path)
    assert shipped[0].is_file()
    assert resolve_images(["http://x/a.png"], "cli", allow_urls=True) == ["http://x/a.png"]


def test_url_and_data_uri_images_answer_like_the_local_file(engine, tmp_path, monkeypatch):
    import base64
    import functools
    import http.server
    import threading

    from mmlora.config.paths import assets_dir

    served = assets_dir() / "demo" / "images"
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    name = "blue_circle_black_112x168.png"
    url = f"http://127.0.0.1:{server.server_address[1]}/{name}"
    data_uri = "data:image/png;base64," + base64.b64encode((served / name).read_bytes()).decode()
    settings = GenerationSettings(max_new_tokens=6)
    try:
        with pytest.raises(RowError, match="is a URL; fetching URLs is off"):
            engine.answer([Request("What color?", [url])], settings)
        engine.allow_urls = True
        answers = engine.answer([Request("What color?", [url]), Request("What color?", [data_uri]),
                                 Request("What color?", [str(served / name)])], settings)
    finally:
        server.shutdown()
    assert answers[0] == answers[1] == answers[2]
