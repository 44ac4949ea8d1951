"""`mmlora data check` / `mmlora data preview --json` on every shipped example dataset, as users
run them (subprocesses), with counts and trained spans checked against the examples' content."""

import collections
import importlib.util
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mmlora.config.paths import assets_dir

EXAMPLES = assets_dir() / "examples"
END = "<|im_end|>"


def load_make_examples():
    spec = importlib.util.spec_from_file_location("make_examples", EXAMPLES / "make_examples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make = load_make_examples()


def most_common(answers):
    return collections.Counter(answers).most_common(1)[0][0]


def expected_trained() -> dict[str, list[list[str]]]:
    """Per example recipe: for each training sample, its assistant answers (+ end token)."""
    vqa = [[most_common(answers) + END] for _, _, answers in make.VQA]
    first_captions = [[captions[0] + END] for _, captions in make.CAPTIONS]
    every_caption = [[c + END] for _, captions in make.CAPTIONS for c in captions]

    def turns(messages, role="assistant", key="content"):
        texts = []
        for m in messages:
            if m.get("role", m.get("from")) in (role, "gpt"):
                content = m.get(key, m.get("value"))
                texts.append((content if isinstance(content, str) else content[0]["text"]) + END)
        return texts

    return {
        "vqa_jsonl": vqa, "vqa_csv": vqa, "vqa_parquet": vqa, "imagefolder": vqa,
        "caption_jsonl": every_caption, "hf_dataset": first_captions,
        "messages_jsonl": [turns(r["messages"]) for r in make.messages_rows()],
        "sharegpt_json": [turns(r["conversations"]) for r in make.sharegpt_rows()],
    }


def expected_rows() -> dict[str, int]:
    return {"vqa_jsonl": len(make.VQA), "vqa_csv": len(make.VQA), "vqa_parquet": len(make.VQA),
            "imagefolder": len(make.VQA), "caption_jsonl": len(make.CAPTIONS), "hf_dataset": len(make.CAPTIONS),
            "messages_jsonl": len(make.messages_rows()), "sharegpt_json": len(make.sharegpt_rows())}


def test_every_example_has_a_recipe_and_the_files_match_their_generator(tmp_path):
    assert {p.stem for p in (EXAMPLES / "recipes").glob("*.yaml")} == set(expected_rows())
    make.write(tmp_path)
    for name in ("vqa.jsonl", "caption.jsonl", "messages.jsonl", "sharegpt.json", "vqa.csv", "images/metadata.jsonl"):
        assert (tmp_path / name).read_text() == (EXAMPLES / name).read_text(), f"{name}: rerun make_examples.py"
    assert len(list((EXAMPLES / "images").glob("*.png"))) <= 8


def run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmlora", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def outputs():
    """check --json and preview --json over all example recipes: two processes, run side by side."""
    recipes = [str(p) for p in sorted((EXAMPLES / "recipes").glob("*.yaml"))]
    commands = [["data", "check", *recipes, "--json"], ["data", "preview", *recipes, "--json", "--n", "100"]]
    with ThreadPoolExecutor(max_workers=2) as pool:
        check, preview = pool.map(run, commands)
    assert check.returncode == 0 and preview.returncode == 0, check.stderr + preview.stderr
    by_name = {}
    for action, result in (("check", check), ("preview", preview)):
        for recipe, output in json.loads(result.stdout).items():
            by_name[(Path(recipe).stem, action)] = output
    return by_name


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(expected_rows()))
def test_data_check_counts_match_the_example(outputs, name):
    train = outputs[(name, "check")]["train"]
    samples = sum(1 for _ in expected_trained()[name])
    assert (train["rows"], train["samples"], train["skipped"], train["dropped_too_long"]) == \
        (expected_rows()[name], samples, {}, 0)
    trained = sum(len(turn) for turns in expected_trained()[name] for turn in turns)  # characters, a lower bound
    assert 0 < train["trained_tokens"] <= trained and 0 < train["trained_token_share"] < 1
    assert train["sequence_length"]["min"] <= train["sequence_length"]["median"] <= train["sequence_length"]["max"]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(expected_rows()))
def test_data_preview_json_shows_exactly_the_answers_as_trained(outputs, name):
    items = outputs[(name, "preview")]
    assert [item["trained"] for item in items] == expected_trained()[name]
    for item in items:
        assert set(item) == {"source", "text", "trained", "num_image_tokens", "num_tokens", "truncated"}
        assert item["num_tokens"] > item["num_image_tokens"] >= 0
        assert all(span in item["text"] for span in item["trained"])
    assert any(item["num_image_tokens"] == 0 for item in items) == (name == "messages_jsonl")  # text-only row


def test_data_command_errors_and_single_recipe_shape(capsys):
    from mmlora.cli import main

    vqa = str(EXAMPLES / "recipes" / "vqa_jsonl.yaml")
    assert main(["data", "check", "no_such_recipe"]) == 2
    assert main(["data", "check", "data.max_length=8"]) == 2
    assert main(["data", "preview", vqa, "--split", "eval"]) == 2
    capsys.readouterr()
    assert main(["data", "preview", vqa, "data.max_length=64", "--json", "--n", "1"]) == 0
    [item] = json.loads(capsys.readouterr().out)  # one recipe: the list itself, not keyed by recipe
    assert item["trained"] == ["red" + END] and item["num_tokens"] <= 64



@pytest.mark.parametrize(("recipe", "collapsed"), [("tiny_gemma3_vqa", "<image_soft_token>x4"),
                                                    ("tiny_vqa", "<|image_pad|>x20")])
def test_preview_collapses_the_visual_feature_run(capsys, recipe, collapsed):
    """Gemma 3 repeats a feature token that differs from its image marker: both collapse."""
    from mmlora.cli import main

    assert main(["data", "preview", recipe, "--n", "1"]) == 0
    out = capsys.readouterr().out
    assert collapsed in out and collapsed.split("x")[0] * 2 not in out

def test_check_and_preview_never_load_weights(monkeypatch):
    import transformers

    import mmlora.models.loading
    from mmlora.config.loading import load_recipe
    from mmlora.data import check as datacheck

    def refuse(*args, **kwargs):
        raise AssertionError("model weights were loaded")

    monkeypatch.setattr(mmlora.models.loading, "load_model_and_processor", refuse)
    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_config", refuse)
    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", refuse)
    recipe = load_recipe(EXAMPLES / "recipes" / "sharegpt_json.yaml")
    assert datacheck.check_recipe(recipe, progress=False)["train"]["samples"] == len(make.sharegpt_rows())
    assert len(datacheck.preview_samples(recipe, n=2)) == 2
