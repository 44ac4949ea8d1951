"""The shipped ``evaluate`` modules load offline by path and agree with the plain functions.

The loading tests are marked ``slow``: their run time (~7 s alone) is the one-off
``import evaluate``, which imports ``transformers.pipelines`` (and torch); in a
full test run that cost is shared with every other test importing transformers.
"""

from __future__ import annotations

import re
import socket

import pytest

from mmlora.evaluation.metrics import (
    METRIC_NAMES, caption_scores, evaluate_module_path, load_metric, vqa_scores,
)


def test_module_files_follow_the_loader_rules():
    # evaluate scans the copied script line by line: imports must be absolute,
    # one per line, and `from evaluate import Metric` would make evaluate pick
    # `Metric` itself as the module class.
    for name in METRIC_NAMES:
        source = evaluate_module_path(name).read_text(encoding="utf-8")
        imports = [line for line in source.splitlines() if re.match(r"^(import|from)\s", line)]
        assert imports, name
        for line in imports:
            assert "," not in line and not line.startswith("from ."), line
            assert not line.startswith("from evaluate"), line


def test_unknown_metric_name():
    with pytest.raises(ValueError, match="vqa_accuracy"):
        evaluate_module_path("bleurt")


@pytest.fixture
def offline(monkeypatch):
    """Hub offline flags set, and any attempt to open a network connection fails."""
    pytest.importorskip("evaluate")
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE"):
        monkeypatch.setenv(var, "1")

    def refuse(self, address, *args, **kwargs):
        if isinstance(address, tuple):  # AF_INET / AF_INET6, not local sockets
            raise OSError(f"network access attempted in an offline test: {address}")
        return original(self, address, *args, **kwargs)

    original = socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.mark.slow
def test_vqa_module_matches_plain_function(offline, tmp_path):
    metric = load_metric("vqa_accuracy", cache_dir=tmp_path)
    predictions = ["Two", "yes", "helo"]
    references = [["2"] * 10, ["no"] * 9 + ["yes"], ["hello"]]
    result = metric.compute(predictions=predictions, references=references)
    assert result == vqa_scores(predictions, references)
    assert result["vqa_accuracy"] == pytest.approx((1.0 + 0.3 + 0.0) / 3)
    official = metric.compute(
        predictions=["Yes."], references=[["yes"] * 10], normalization="official"
    )
    assert official["vqa_accuracy"] == 0.0


@pytest.mark.slow
def test_caption_module_matches_plain_function(offline, tmp_path):
    metric = load_metric("caption_metrics", cache_dir=tmp_path)
    predictions = ["A dog runs on the beach.", "A plate of pasta.", "A red bike."]
    references = [
        ["A dog running on the beach.", "A brown dog on the sand."],
        ["A plate of pasta with sauce.", "Pasta on a plate."],
        ["A man riding a red bike.", "A red bicycle."],
    ]
    result = metric.compute(predictions=predictions, references=references)
    assert result == caption_scores(predictions, references)
    assert set(result) == {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider_d"}
