"""The server's batcher: a request that cannot be answered (past the model's context, a bad
image) fails alone; the other requests of its batch are answered as they would be alone."""

from __future__ import annotations

import pytest

from mmlora.config.paths import assets_dir
from mmlora.data.samples import RowError
from mmlora.inference.batcher import Batcher
from mmlora.inference.context_length import ContextLengthError
from mmlora.inference.engine import GenerationSettings, InferenceEngine, Request

SMALL = str(assets_dir() / "demo" / "images" / "blue_circle_black_112x112.png")
LONG_TEXT = "word " * 1100  # past the tiny model's context of 4096 tokens


@pytest.fixture
def engine(tiny):
    return InferenceEngine(tiny.model, tiny.processor, name="tiny/qwen2-vl")


def test_a_request_past_the_context_fails_alone_and_its_batch_is_answered(engine, tmp_path):
    settings = GenerationSettings(max_new_tokens=6)
    good = [Request("What color is the shape?", [SMALL]), Request("Describe the image.", [SMALL])]
    expected = [engine.answer([request], settings)[0] for request in good]
    batcher = Batcher(engine, max_batch=4, window_s=2.0)
    try:
        futures = [batcher.submit(good[0], settings), batcher.submit(Request(LONG_TEXT, [SMALL]), settings),
                   batcher.submit(Request("x", [str(tmp_path / "missing.png")]), settings),
                   batcher.submit(good[1], settings)]
        assert [futures[0].result(60).text, futures[3].result(60).text] == expected
        with pytest.raises(ContextLengthError, match=r"is 6: more than the model's context of 4096 tokens"):
            futures[1].result(60)
        with pytest.raises(RowError, match=r"image '.*missing.png' not found"):
            futures[2].result(60)
    finally:
        batcher.close()
    assert batcher.batch_sizes == [4]  # all four arrived in one batch
