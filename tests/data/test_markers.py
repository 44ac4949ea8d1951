"""One rule for `<image>` markers in every row format, family and `mmlora infer --prompt`: a
marker places an image, the text around it keeps its spacing, a count that differs from the
images is a located row error."""

import json
import re

import pytest
from PIL import Image

from mmlora.config.schema import DataConfig
from mmlora.data.check import run_data_command
from mmlora.data.collate import encode_for_training
from mmlora.data.loading import iter_samples, load_samples
from mmlora.data.samples import Sample, assistant_turn, user_turn
from mmlora.errors import MmloraError
from tests.models.test_plain_text import TWINS, processor_for

MID = [{"type": "text", "text": "What is "}, {"type": "image"}, {"type": "text", "text": " here?"}]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def folder(tmp_path):
    for name in ("a.png", "b.png"):
        Image.new("RGB", (140, 112), "red").save(tmp_path / name)
    return tmp_path


def user_content(folder, row, **cfg):
    write_jsonl(folder / "d.jsonl", [row])
    sample = load_samples(folder / "d.jsonl", DataConfig(train="x", **cfg))[0]
    return next(m for m in sample.messages if m["role"] == "user")["content"]


@pytest.mark.parametrize("row", [
    {"image": "a.png", "question": "What is <image> here?", "answer": "red"},
    {"images": ["a.png"], "messages": [{"role": "user", "content": "What is <image> here?"},
                                        {"role": "assistant", "content": "red"}]},
    {"images": ["a.png"], "messages": [{"role": "user", "content": [{"type": "text", "text": "What is <image> here?"}]},
                                        {"role": "assistant", "content": "red"}]},
    {"image": "a.png", "conversations": [{"from": "human", "value": "What is <image> here?"},
                                         {"from": "gpt", "value": "red"}]},
], ids=["vqa", "messages_string", "messages_parts", "sharegpt"])
def test_a_mid_sentence_marker_places_the_image_and_keeps_the_spacing(folder, row):
    assert user_content(folder, row) == MID


def test_caption_prompt_markers_and_leading_markers(folder):
    row = {"image": "a.png", "caption": "a red square"}
    assert user_content(folder, row, caption_prompt="Describe <image> briefly.") == [
        {"type": "text", "text": "Describe "}, {"type": "image"}, {"type": "text", "text": " briefly."}]
    # `<image>\n` first (LLaVA's convention), or no marker at all: the same sample
    leading = {"image": "a.png", "question": "<image>\nWhat is it?", "answer": "red"}
    plain = {"image": "a.png", "question": "What is it?", "answer": "red"}
    assert user_content(folder, leading) == user_content(folder, plain) == [
        {"type": "image"}, {"type": "text", "text": "What is it?"}]
    two = {"images": ["a.png", "b.png"], "question": "Compare <image>\n<image>\n please.", "answer": "same"}
    assert user_content(folder, two) == [
        {"type": "text", "text": "Compare "}, {"type": "image"}, {"type": "image"}, {"type": "text", "text": "\n please."}]


def test_marker_in_assistant_and_system_text_is_plain_text(folder):
    row = {"images": ["a.png"], "messages": [
        {"role": "system", "content": "Tags like <image> are HTML."},
        {"role": "user", "content": "<image>\nWrite the tag."}, {"role": "assistant", "content": "<image>"}]}
    write_jsonl(folder / "d.jsonl", [row])
    sample = load_samples(folder / "d.jsonl", DataConfig(train="x"))[0]
    assert sample.messages[0]["content"] == [{"type": "text", "text": "Tags like <image> are HTML."}]
    assert sample.messages[2]["content"] == [{"type": "text", "text": "<image>"}]


@pytest.mark.parametrize(("row", "field"), [
    ({"image": "a.png", "question": "<image> and <image>?", "answer": "red"}, "field 'question'"),
    ({"images": ["a.png", "b.png"], "question": "Only <image>?", "answer": "red"}, "field 'question'"),
    ({"image": "a.png", "conversations": [{"from": "human", "value": "<image><image>Q"},
                                          {"from": "gpt", "value": "A"}]}, "field 'conversations'"),
    ({"messages": [{"role": "user", "content": "What is <image>?"}, {"role": "assistant", "content": "A"}]},
     "field 'messages'"),
])
def test_a_marker_count_that_differs_from_the_images_is_a_located_row_error(folder, row, field):
    write_jsonl(folder / "d.jsonl", [{"image": "a.png", "caption": "fine"}, row])
    results = list(iter_samples(folder / "d.jsonl", DataConfig(train="x")))
    problem = results[1].problem
    assert problem.reason == "image_mismatch" and problem.where == f"{folder / 'd.jsonl'}:2"
    assert field in str(problem) and "marker" in str(problem)


@pytest.mark.parametrize("name", sorted(TWINS))
def test_every_family_renders_the_marker_in_place_with_its_spacing(name):
    """Qwen-VL, SmolVLM and Gemma 3 templates put the image where the marker was; LLaVA,
    LLaVA-NeXT and PaliGemma put every image before the text (as they were trained), the text
    reading as written."""
    processor = processor_for(name)
    question = "What is <image> here?"
    sample = Sample([Image.new("RGB", (140, 112), "red")], [user_turn(question), assistant_turn("red")], "t")
    example = encode_for_training(processor, sample, 4096)
    assert example.input_ids.count(processor.image_token_id) == TWINS[name][2]
    text = processor.decode(example.input_ids, skip_special_tokens=False)
    feature = processor.family.feature_token
    if name in ("llava", "llava_next", "paligemma"):
        assert "What is  here?" in text and text.index(feature) < text.index("What is")
    else:
        assert re.search(r"What is\s", text) and re.search(r"\shere\?", text)
        assert text.index("What is") < text.index(feature) < text.index("here?")
    assert "What ishere" not in text and text.count("<image>") == text.count(feature) * (feature == "<image>")


@pytest.mark.parametrize("name", ["llava", "paligemma", "qwen2_vl", "gemma3"])
def test_data_check_reports_a_bad_marker_count_as_one_row_error(folder, name):
    write_jsonl(folder / "d.jsonl", [{"image": "a.png", "question": "<image>\nWhat is <image>?", "answer": "red"},
                                     {"image": "a.png", "question": "<image>\nWhat is it?", "answer": "red"}])
    out, status = run_data_command("check", [TWINS[name][1]], [f"data.train={folder / 'd.jsonl'}", "data.eval=null"],
                                   as_json=True)
    report = json.loads(out)["train"]
    assert status == 1 and report["samples"] == 1 and report["skipped"] == {"image_mismatch": 1}
    assert report["problems"][0]["where"].endswith("d.jsonl:1")
    assert "field 'question' has 2 <image> marker(s)" in report["problems"][0]["message"]


def test_llava_infer_prompt_with_the_standard_marker(folder):
    from mmlora.inference.infer import answer_one

    image = str(folder / "a.png")
    marked = answer_one("tiny/llava", None, image, "<image>\nWhat color is it?", max_new_tokens=4)
    unmarked = answer_one("tiny/llava", None, image, "What color is it?", max_new_tokens=4)
    assert marked == unmarked  # `<image>\n` first is where LLaVA puts an unmarked image anyway
    with pytest.raises(MmloraError, match=r"--prompt has 2 <image> marker\(s\) but there is 1 image"):
        answer_one("tiny/llava", None, image, "<image> and <image>", max_new_tokens=4)


def test_infer_marker_mismatch_is_one_line_from_the_cli(folder, capsys):
    from mmlora.cli import main

    code = main(["infer", "--model", "tiny/llava", "--image", str(folder / "a.png"), "--prompt", "<image><image>Q"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "Traceback" not in err
    assert err.splitlines()[-1].startswith("mmlora:") and "--prompt has 2 <image> marker(s)" in err


def test_more_rendered_placeholders_than_images_is_a_clear_error_not_an_index_error():
    from mmlora.models.processor import expand_placeholders

    assert expand_placeholders("a<x>b", "<x>", [2]) == "a<x><x>b"
    with pytest.raises(MmloraError, match=r"2 image placeholder\(s\) '<x>' but the sample has 1 image"):
        expand_placeholders("a<x>b<x>", "<x>", [2])
