"""Every row format becomes the same internal row for the same content."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from mmlora.config.schema import DataConfig
from mmlora.data.images import load_image
from mmlora.data.loading import iter_samples, load_samples
from mmlora.errors import MmloraError

QUESTION, ANSWER = "What color is the shape?", "red"
SYSTEM = "Answer in one word."
EXPECTED_VQA = {
    "messages": [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]},
        {"role": "assistant", "content": [{"type": "text", "text": ANSWER}]},
    ],
}


def cfg(**kw) -> DataConfig:
    return DataConfig(train="x", system_prompt=SYSTEM, **kw)


def pixels(refs) -> list:
    return [np.asarray(load_image(ref)).tolist() for ref in refs]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """One VQA sample (image a.png, the question, the answer) written in every format."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path_factory.mktemp("formats")
    Image.new("RGB", (56, 42), (200, 20, 20)).save(d / "a.png")
    png = (d / "a.png").read_bytes()
    user_parts = [{"type": "image"}, {"type": "text", "text": QUESTION}]
    sources = {
        "vqa.jsonl": write_jsonl(d / "vqa.jsonl", [{"image": "a.png", "question": QUESTION, "answer": ANSWER}]),
        "vqav2.jsonl": write_jsonl(d / "vqav2.jsonl", [{"image": "a.png", "question": f"  {QUESTION} ",
                                                        "answers": [{"answer": a} for a in ["red"] * 6 + ["pink"] * 4]}]),
        "messages.jsonl": write_jsonl(d / "messages.jsonl", [{"images": ["a.png"], "messages": [
            {"role": "user", "content": user_parts},
            {"role": "assistant", "content": [{"type": "text", "text": ANSWER}]}]}]),
        "messages_str.jsonl": write_jsonl(d / "messages_str.jsonl", [{"images": "a.png", "messages": [
            {"role": "user", "content": f"<image>\n{QUESTION}"}, {"role": "assistant", "content": ANSWER}]}]),
        "messages_inline.jsonl": write_jsonl(d / "messages_inline.jsonl", [{"messages": [
            {"role": "user", "content": [{"type": "image", "image": "a.png"}, {"type": "text", "text": QUESTION}]},
            {"role": "assistant", "content": ANSWER}]}]),
        "messages_no_tag.jsonl": write_jsonl(d / "messages_no_tag.jsonl", [{"images": ["a.png"], "messages": [
            {"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}]}]),
    }
    (d / "llava.json").write_text(json.dumps([{"id": "1", "image": "a.png", "conversations": [
        {"from": "human", "value": f"<image>\n{QUESTION}"}, {"from": "gpt", "value": ANSWER}]}]))
    sources["llava.json"] = d / "llava.json"
    with (d / "vqa.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([["img", "q", "a"], ["a.png", QUESTION, ANSWER]])
    sources["vqa.csv"] = d / "vqa.csv"
    pq.write_table(pa.Table.from_pylist([{"image": "a.png", "question": QUESTION, "answer": ANSWER}]), d / "paths.parquet")
    sources["paths.parquet"] = d / "paths.parquet"
    pq.write_table(pa.Table.from_pylist([{"image": {"bytes": png, "path": "a.png"}, "question": QUESTION,
                                          "answers": [ANSWER]}]), d / "bytes.parquet")
    sources["bytes.parquet"] = d / "bytes.parquet"
    in_memory = datasets.Dataset.from_dict({"image": [Image.open(d / "a.png")], "question": [QUESTION], "answer": [ANSWER]})
    in_memory.save_to_disk(str(d / "saved"))
    sources["saved"] = d / "saved"
    sources["in_memory"] = in_memory
    sources["pil_rows"] = [{"image": Image.open(d / "a.png"), "question": QUESTION, "answer": ANSWER}]
    (d / "folder").mkdir()
    (d / "folder" / "a.png").write_bytes(png)
    (d / "folder" / "metadata.csv").write_text(f"file_name,question,answer\na.png,{QUESTION},{ANSWER}\n")
    sources["imagefolder"] = d / "folder"
    return d, sources


def test_every_format_gives_the_identical_internal_row(data):
    d, sources = data
    reference = pixels([d / "a.png"])
    assert len(sources) == 14
    for name, source in sources.items():
        column_map = ["img=image", "q=question", "a=answer"] if name == "vqa.csv" else []
        samples = load_samples(source, cfg(column_map=column_map))
        assert len(samples) == 1, name
        row = samples[0].row()
        assert row["messages"] == EXPECTED_VQA["messages"], name
        assert pixels(row["images"]) == reference, name
        if isinstance(source, type(d)) and source.suffix in (".jsonl", ".json", ".csv"):
            assert row["images"] == [d / "a.png"], name  # paths resolved against the file's folder


def test_vqav2_answers_train_the_most_common_and_keep_all_as_references(data):
    _, sources = data
    sample = load_samples(sources["vqav2.jsonl"], cfg())[0]
    assert sample.references == ["red"] * 6 + ["pink"] * 4


def test_multi_turn_multi_image_text_only_agree_between_messages_and_sharegpt(tmp_path):
    for name in ("a.png", "b.png"):
        Image.new("RGB", (30, 30)).save(tmp_path / name)
    write_jsonl(tmp_path / "m.jsonl", [
        {"images": ["a.png", "b.png"], "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "First?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "a circle"}]},
            {"role": "user", "content": [{"type": "text", "text": "And this one?"}, {"type": "image"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "a square"}]}]},
        {"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi"}]},
    ])
    (tmp_path / "s.json").write_text(json.dumps([
        {"image": ["a.png", "b.png"], "system": "Be brief.", "conversations": [
            {"from": "human", "value": "<image>\nFirst?"}, {"from": "gpt", "value": "a circle"},
            {"from": "human", "value": "And this one?\n<image>"}, {"from": "gpt", "value": "a square"}]},
        {"conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "hi"}]},
    ]))
    from_messages = [s.row() for s in load_samples(tmp_path / "m.jsonl", DataConfig(train="x"))]
    from_sharegpt = [s.row() for s in load_samples(tmp_path / "s.json", DataConfig(train="x"))]
    assert from_messages == from_sharegpt
    assert from_messages[0]["images"] == [tmp_path / "a.png", tmp_path / "b.png"]
    assert from_messages[0]["messages"][3]["content"] == [{"type": "text", "text": "And this one?"}, {"type": "image"}]
    assert from_messages[1] == {"images": [], "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Say hi."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "hi"}]}]}


def test_caption_rows_use_the_prompt_and_the_caption_policy(tmp_path):
    Image.new("RGB", (30, 30)).save(tmp_path / "a.png")
    write_jsonl(tmp_path / "c.jsonl", [{"image": "a.png", "captions": ["one", " two ", ""]},
                                       {"image": "a.png", "caption": "three"}])
    prompt = [{"type": "image"}, {"type": "text", "text": "Caption it."}]

    def answers(samples):
        return [(s.messages[-1]["content"][0]["text"], s.answer_options) for s in samples]

    every = list(iter_samples(tmp_path / "c.jsonl", DataConfig(train="x", caption_prompt="Caption it."), expand_captions=True))
    assert [answers(r.samples) for r in every] == [[("one", []), ("two", [])], [("three", [])]]
    assert every[0].samples[0].messages[0] == {"role": "user", "content": prompt}
    assert every[0].samples[0].references == ["one", "two"]
    drawn = list(iter_samples(tmp_path / "c.jsonl", DataConfig(train="x", captions_per_image="random"), expand_captions=True))
    assert [answers(r.samples) for r in drawn] == [[("one", ["one", "two"])], [("three", [])]]
    # evaluation (no expansion): one sample per image, every caption a reference
    assert [s.references for s in load_samples(tmp_path / "c.jsonl", DataConfig(train="x"))] == [["one", "two"], ["three"]]


def test_question_template_and_explicit_format(tmp_path):
    Image.new("RGB", (30, 30)).save(tmp_path / "a.png")
    write_jsonl(tmp_path / "v.jsonl", [{"image": "a.png", "question": "Color?", "answer": "red", "caption": "x"}])
    sample = load_samples(tmp_path / "v.jsonl", DataConfig(train="x", question_template="{question} One word."))[0]
    assert sample.messages[0]["content"][1]["text"] == "Color? One word."
    as_caption = load_samples(tmp_path / "v.jsonl", DataConfig(train="x", format="caption"))[0]
    assert as_caption.messages[-1]["content"][0]["text"] == "x"


@pytest.mark.parametrize("row, reason", [
    ({"images": ["a.png"], "messages": [{"role": "user", "content": "<image><image>Q"},
                                         {"role": "assistant", "content": "A"}]}, "image_mismatch"),
    ({"messages": [{"role": "user", "content": "Q"}]}, "missing_answer"),
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": " "}]}, "empty_answer"),
    ({"messages": [{"role": "robot", "content": "Q"}]}, "bad_row"),
    ({"conversations": [{"from": "alien", "value": "Q"}]}, "bad_row"),
    ({"image": "a.png", "answer": "red"}, "missing_question"),
    ({"image": "a.png", "question": "Q?"}, "missing_answer"),
    ({"image": "a.png", "question": "Q?", "answers": []}, "missing_answer"),
    ({"image": "a.png", "captions": ["", " "]}, "empty_answer"),
    ({"image": "a.png"}, "missing_answer"),
    ({"question": "Q?", "answer": "A"}, "bad_row"),
    ({"picture": "a.png"}, "bad_row"),
    ([1, 2], "bad_row"),
])
def test_bad_rows_are_located_with_their_reason(tmp_path, row, reason):
    Image.new("RGB", (30, 30)).save(tmp_path / "a.png")
    write_jsonl(tmp_path / "bad.jsonl", [{"image": "a.png", "caption": "fine"}, row])
    results = list(iter_samples(tmp_path / "bad.jsonl", DataConfig(train="x")))
    assert results[0].problem is None and results[1].problem.reason == reason
    assert results[1].problem.where == f"{tmp_path / 'bad.jsonl'}:2"
    with pytest.raises(MmloraError, match=r"bad\.jsonl:2: .*data\.on_error=skip"):
        load_samples(tmp_path / "bad.jsonl", DataConfig(train="x"))
    assert len(load_samples(tmp_path / "bad.jsonl", DataConfig(train="x", on_error="skip"))) == 1


def test_file_level_problems_are_one_clear_error(tmp_path):
    (tmp_path / "d.txt").write_text("x")
    (tmp_path / "arr.json").write_text('[{"image": ')
    (tmp_path / "empty_dir").mkdir()
    for path, message in [(tmp_path / "nope.jsonl", "does not exist"), (tmp_path / "d.txt", "unknown extension"),
                          (tmp_path / "arr.json", "not a valid JSON array"),
                          (tmp_path / "empty_dir", "folder without a dataset")]:
        with pytest.raises(MmloraError, match=message):
            load_samples(path, DataConfig(train="x"))
    with pytest.raises(MmloraError, match="not of the form source=target"):
        load_samples(tmp_path / "arr.json", DataConfig(train="x", column_map=["oops"]))


def test_dataset_dict_folder_names_its_split_folders(tmp_path):
    import datasets

    Image.new("RGB", (30, 30)).save(tmp_path / "a.png")
    split = datasets.Dataset.from_dict({"image": [str(tmp_path / "a.png")], "caption": ["x"]})
    split = split.cast_column("image", datasets.Image())
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(MmloraError, match=r"several splits \(test, train\).*dd/test"):
        load_samples(tmp_path / "dd", DataConfig(train="x"))
    [sample] = load_samples(tmp_path / "dd" / "train", DataConfig(train="x"))
    assert sample.messages[-1]["content"][0]["text"] == "x" and isinstance(sample.images[0], bytes)


def test_parquet_nulls_are_absent_fields_and_json_cells_are_decoded(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    Image.new("RGB", (30, 30)).save(tmp_path / "a.png")
    pq.write_table(pa.Table.from_pylist([
        {"image": "a.png", "question": "Q?", "answer": "yes", "caption": None},
        {"image": "a.png", "question": None, "answer": None, "caption": "a square"},
        {"image": "a.png", "question": "Q?", "answer": '["no", "no", "yes"]', "caption": None},
    ]), tmp_path / "mixed.parquet")
    samples = load_samples(tmp_path / "mixed.parquet", DataConfig(train="x", column_map=["answer=answers"]))
    assert [s.messages[-1]["content"][0]["text"] for s in samples] == ["yes", "a square", "no"]


def test_the_most_common_answer_is_the_counters_first_seen_on_ties():
    import collections
    import random

    from mmlora.data.samples import most_common_answer

    rng = random.Random(0)
    for size in [1, 2, 3, 10, 10, 10, 31, 32, 33, 200]:  # the short-list way and the Counter's
        for _ in range(50):
            answers = [rng.choice(["red", "blue", "2", "two", "Red"]) for _ in range(size)]
            assert most_common_answer(answers) == collections.Counter(answers).most_common(1)[0][0]
    assert most_common_answer(["b", "a", "a", "b"]) == "b"  # a tie: the first seen
