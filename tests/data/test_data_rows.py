"""Adversarial row content and the wording of data errors: invisible answers, assistant-first
chats, numbers as text, column_map naming an absent column, JSON wrappers, paths that are not
files, and the next step when nothing is usable."""

import json
import os
import re

import pytest
from PIL import Image

from mmlora.config.schema import DataConfig
from mmlora.data.loading import iter_samples, load_samples
from mmlora.data.scan import enforce_on_error, scan_split
from mmlora.errors import MmloraError

INVISIBLE = ["\u200b", "\u200b\u200d", " \u200c\u2060 ", "\ufeff", "\u3164", "\u2800", "\u200e\u200f", "\u0301"]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def outcomes(path, **cfg) -> list:
    """Per row: the trained answer, or (reason, message) of the refusal."""
    return [(r.problem.reason, r.problem.detail) if r.problem else r.samples[0].messages[-1]["content"][0]["text"]
            for r in iter_samples(path, DataConfig(train="x", **cfg))]



@pytest.mark.parametrize("blank", INVISIBLE)
def test_answers_of_invisible_characters_only_are_empty(folder, blank):
    rows = [{"image": "a.png", "question": "Q?", "answer": blank},
            {"image": "a.png", "caption": blank},
            {"image": "a.png", "question": "Q?", "answers": [blank, blank]},
            {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": blank}]},
            {"messages": [{"role": "user", "content": "Q"},
                          {"role": "assistant", "content": [{"type": "text", "text": blank}]}]},
            {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": blank}]},
            {"image": "a.png", "question": blank, "answer": "red"}]
    found = outcomes(write_jsonl(folder / "blank.jsonl", rows))
    assert [f[0] for f in found] == ["empty_answer"] * 6 + ["missing_question"]


def test_invisible_characters_inside_a_real_answer_are_kept_and_named_when_alone(folder):
    rows = [{"image": "a.png", "question": "Q?", "answers": ["\u200b", "red", "red"]},
            {"image": "a.png", "question": "Q?", "answer": "\u200b\u200d"}]
    found = outcomes(write_jsonl(folder / "mixed.jsonl", rows))
    assert found[0] == "red"
    assert found[1] == ("empty_answer", "field 'answer' is empty (only invisible characters: U+200B U+200D)")


@pytest.mark.parametrize("messages", [
    [{"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
    [{"role": "system", "content": "Be brief."}, {"role": "assistant", "content": "Hi"},
     {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
])
def test_a_conversation_that_starts_with_the_assistant_is_a_clear_row_error(folder, processor, messages):
    index = 0 if messages[0]["role"] == "assistant" else 1
    rows = [{"images": ["a.png"], "messages": messages},
            {"image": "a.png", "conversations": [{"from": m["role"].replace("assistant", "gpt").replace("user", "human"),
                                                  "value": m["content"]} for m in messages]},
            {"image": "a.png", "question": "Q?", "answer": "A"}]
    path = write_jsonl(folder / "first.jsonl", rows)
    scan = scan_split(path, DataConfig(train="x"), processor, progress=False)  # no template crash
    assert len(scan.samples) == 1 and [p.reason for p in scan.problems] == ["bad_row", "bad_row"]
    assert str(scan.problems[0]).endswith(f"first.jsonl:1: messages[{index}] is an assistant turn before any user "
                                          "turn: a conversation must start with the user (after an optional system "
                                          "turn); remove the opening assistant turn or move its text into the system turn")


def test_numbers_are_text_booleans_and_nan_are_refused(folder):
    rows = [{"image": "a.png", "question": "How many?", "answer": 2},
            {"image": "a.png", "question": "How many?", "answers": [3, "3", 4]},
            {"image": "a.png", "question": 1999, "answer": "a year"},
            {"image": "a.png", "caption": 2.5},
            {"messages": [{"role": "user", "content": "How many?"}, {"role": "assistant", "content": 7}]},
            {"image": "a.png", "question": "Is it red?", "answer": True}]
    path = write_jsonl(folder / "numbers.jsonl", rows)
    with path.open("a") as handle:
        handle.write('{"image": "a.png", "question": "How many?", "answer": NaN}\n')
    found = outcomes(path)
    assert found[:5] == ["2", "3", "a year", "2.5", "7"]
    assert found[5] == ("bad_row", "field 'answer' is true (a boolean); write the text to train, e.g. \"yes\" or \"no\"")
    assert found[6][0] == "missing_answer" and "is nan" in found[6][1]
    [sample] = load_samples(write_jsonl(folder / "q.jsonl", [rows[2]]), DataConfig(train="x"))
    assert sample.messages[0]["content"][-1]["text"] == "1999"


def test_column_map_naming_an_absent_column_is_one_file_error(folder):
    (folder / "t.csv").write_text("img,question,answer\na.png,Q?,red\na.png,Q?,blue\n")
    with pytest.raises(MmloraError) as info:
        load_samples(folder / "t.csv", DataConfig(train="x", column_map=["picture=image"]))
    assert str(info.value) == (f"{folder / 't.csv'}: data.column_map maps 'picture' onto 'image', but it has no "
                               "column 'picture' (its columns: img, question, answer). Fix the column name in "
                               "data.column_map.")
    write_jsonl(folder / "t.jsonl", [{"img": "a.png", "question": "Q?", "answer": "red"}] * 3)
    with pytest.raises(MmloraError, match=r"t\.jsonl: data\.column_map maps 'picture' onto 'image', but no row has "
                                          r"column 'picture' \(its columns: answer, img, question\)"):
        list(iter_samples(folder / "t.jsonl", DataConfig(train="x", column_map=["picture=image"], on_error="skip")))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"img": "a.png", "q": "Q?", "answer": "red"}]), folder / "t.parquet")
    with pytest.raises(MmloraError, match=r"maps 'picture' onto 'image', 'query' onto 'question', but it has no column "
                                          r"'picture', 'query'"):
        load_samples(folder / "t.parquet", DataConfig(train="x", column_map=["picture=image", "query=question"]))


def test_a_row_without_a_mapped_column_says_so(folder):
    write_jsonl(folder / "some.jsonl", [{"img": "a.png", "question": "Q?", "answer": "red"},
                                        {"photo": "a.png", "question": "Q?", "answer": "blue"}])
    found = outcomes(folder / "some.jsonl", column_map=["img=image"])
    assert found[0] == "red"
    assert found[1] == ("bad_row", "field 'image' is missing (flat caption/VQA rows need an image) (data.column_map "
                                   "renames img, but this row has no such column; its fields: answer, photo, question)")


@pytest.mark.parametrize("name, text", [
    ("wrapped.json", json.dumps({"data": [{"image": "a.png", "question": "Q?", "answer": "red"}] * 3}, indent=2)),
    ("wrapped_line.json", json.dumps({"version": 1, "data": [{"image": "a.png", "question": "Q?", "answer": "red"}] * 3})),
    ("wrapped_pretty.jsonl", json.dumps({"data": [{"image": "a.png", "question": "Q?", "answer": "red"}] * 3}, indent=2)),
])
def test_a_json_wrapper_object_is_named_not_n_malformed_lines(folder, name, text):
    (folder / name).write_text(text)
    with pytest.raises(MmloraError) as info:
        load_samples(folder / name, DataConfig(train="x", on_error="skip"))
    assert str(info.value).startswith(f"{folder / name}: expected a list of rows (a JSON array, or one object per "
                                      "line), got one JSON object whose key 'data' holds a list of 3 objects.")
    assert "jq '.data'" in str(info.value)


def test_a_wrapper_on_one_jsonl_line_and_unknown_fields_read_plainly(folder):
    write_jsonl(folder / "w.jsonl", [{"data": [{"image": "a.png", "answer": "x"}]}, {"picture": "a.png", "label": "x"},
                                     {"image": "a.png", "question": "Q?", "answers": [{"text": "x"}]}])
    found = outcomes(folder / "w.jsonl")
    assert found[0] == ("bad_row", "no known fields (the row has data); field data holds a list of objects: a file of "
                                   "rows was expected (one object per line, or a JSON array of objects), not one object "
                                   "wrapping them; rename columns with data.column_map")
    assert found[1] == ("bad_row", "no known fields (the row has label, picture); rename columns with data.column_map")
    assert found[2] == ("bad_row", "field 'answers' must hold text, got [{\"text\": \"x\"}]")


def make_special(folder, kind: str, name: str):
    path = folder / name
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "loop":
        os.symlink(path, path)
    elif kind == "dangling":
        os.symlink(folder / "gone.png", path)
    return path


@pytest.mark.parametrize("kind, said", [("folder", "is a folder, not a file"),
                                        ("fifo", "is a named pipe (FIFO), not a regular file"),
                                        ("loop", "is a symbolic link loop"),
                                        ("dangling", "is a symbolic link to")])
def test_paths_that_are_not_files_say_what_they_are(folder, kind, said):
    make_special(folder, kind, f"{kind}.png")
    [(reason, message)] = outcomes(write_jsonl(folder / "r.jsonl", [{"image": f"{kind}.png", "caption": "x"}]))
    assert reason == ("missing_image" if kind == "dangling" else "image_not_a_file") and said in message
    if kind != "folder":  # a data path that is a folder is read as a dataset folder
        data = make_special(folder, kind, f"{kind}.jsonl")
        with pytest.raises(MmloraError, match=re.escape(f"Data '{data}' {said}")):
            load_samples(data, DataConfig(train="x"))


def test_no_usable_samples_says_which_max_length_fits(folder, processor):
    Image.new("RGB", (448, 448)).save(folder / "big.png")  # 256 visual tokens
    path = write_jsonl(folder / "long.jsonl", [{"image": "big.png", "question": "Q?", "answer": "red"},
                                               {"image": "big.png", "question": "Q?", "answer": "a red circle " * 9}])
    scan = scan_split(path, DataConfig(train="x", max_length=128), processor, progress=False)
    with pytest.raises(MmloraError) as info:
        enforce_on_error(scan, "skip")
    shortest, longest = sorted(scan.lengths)
    assert f"The samples need {shortest} to {longest} tokens" in str(info.value)
    assert f"set data.max_length={longest} to keep all of them (at least {shortest} keeps the shortest)" in str(info.value)
    fits = scan_split(path, DataConfig(train="x", max_length=longest), processor, progress=False)
    assert len(fits.samples) == 2
    bad = scan_split(write_jsonl(folder / "bad.jsonl", [{"image": "a.png"}]), DataConfig(train="x"), processor,
                     progress=False)
    with pytest.raises(MmloraError, match=r"Every row is bad: `mmlora data check RECIPE` lists each"):
        enforce_on_error(bad, "skip")


def test_messages_errors_show_values_as_written_not_python_reprs(folder):
    write_jsonl(folder / "m.jsonl", [
        {"messages": [{"role": {"name": "user"}, "content": "Q"}, {"role": "assistant", "content": "A"}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": None}]},
                      {"role": "assistant", "content": "A"}]},
        {"messages": [{"role": "user", "content": {"text": "Q"}}, {"role": "assistant", "content": "A"}]},
        {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": [{"type": "text"}]}]},
    ])
    assert [message for _, message in outcomes(folder / "m.jsonl")] == [
        'messages[0].role is {"name": "user"}, expected system, user or assistant',
        'messages[0].content has a text part without text: {"type": "text", "text": null}',
        'messages[0].content must be text or a list of parts, got {"text": "Q"}',
        'messages[1].content has a text part without text: {"type": "text"}',
    ]


def test_messages_count_skips_in_words_not_dict_reprs(folder, processor):
    path = write_jsonl(folder / "bad.jsonl", [{"image": "a.png"}, {"image": "missing.png", "caption": "x"},
                                              {"image": "a.png", "caption": "x"}])
    scan = scan_split(path, DataConfig(train="x"), processor, progress=False)
    with pytest.raises(MmloraError) as info:
        enforce_on_error(scan, "raise")
    assert "(and 1 more bad row(s): missing_answer 1, missing_image 1)" in str(info.value)
    write_jsonl(folder / "all_bad.jsonl", [{"image": "a.png"}, {"image": "missing.png", "caption": "x"}])
    with pytest.raises(MmloraError) as info:
        load_samples(folder / "all_bad.jsonl", DataConfig(train="x", on_error="skip"))
    assert "has no usable rows (all 2 rows were skipped: missing_answer 1, missing_image 1)" in str(info.value)
    assert "{" not in str(info.value)


def test_image_paths_no_file_system_accepts_are_row_errors(folder):
    rows = [{"image": "a\u0000.png", "caption": "x"}, {"image": "a" * 5000 + ".png", "caption": "x"},
            {"image": "a.png", "caption": "x"}]
    found = outcomes(write_jsonl(folder / "odd.jsonl", rows))
    assert found[0] == ("bad_row", "image 'a\u0000.png' is not a valid path (it contains a NUL character)")
    assert found[1][0] == "bad_row" and found[1][1].endswith("is not a valid path (a name in it is too long for "
                                                             "the file system)")
    assert found[2] == "x"


def test_a_sharegpt_system_that_is_not_text_is_a_row_error_not_dropped(folder):
    turns = [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A"}]
    rows = [{"image": "a.png", "system": ["Be brief."], "conversations": turns},
            {"image": "a.png", "system": "Be brief.", "conversations": turns}]
    found = outcomes(write_jsonl(folder / "sys.jsonl", rows))
    assert found[0] == ("bad_row", 'field \'system\' must be text, got ["Be brief."]')
    assert found[1] == "A"
    [sample] = load_samples(write_jsonl(folder / "ok.jsonl", rows[1:]), DataConfig(train="x"))
    assert sample.messages[0]["role"] == "system"


@pytest.mark.parametrize("name", ["one.json", "one.jsonl"])
def test_one_row_object_with_lists_of_objects_is_a_row_not_a_wrapper(folder, name):
    """A row's own lists of objects (messages, VQAv2-style answers) do not make it a wrapper,
    whether the object is on one line or pretty-printed."""
    vqa = {"image": "a.png", "question": "Q?", "answers": [{"answer": "red"}, {"answer": "red"}]}
    chat = {"images": ["a.png"], "messages": [{"role": "user", "content": "Q?"},
                                              {"role": "assistant", "content": "blue"}]}
    for row, answer in ((vqa, "red"), (chat, "blue")):
        (folder / name).write_text(json.dumps(row, indent=2 if name.endswith("l") else None))
        assert outcomes(folder / name) == [answer]
