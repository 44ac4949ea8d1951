"""`mmlora infer --images DIR|FILE.jsonl --output`: batched answers equal to one-at-a-time
answers, bad lines skipped with a located line, nothing answered lost, `--resume`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mmlora.cli import main
from mmlora.config.paths import assets_dir
from mmlora.errors import MmloraError
from mmlora.inference.engine import GenerationSettings, InferenceEngine, Request
from mmlora.inference.inputs import ImageRules, items_from_jsonl
from mmlora.inference.predictions import PredictionWriter, answered_keys, line_key, unanswered

SHAPES = ["blue_circle_black_112x112.png", "blue_circle_black_112x168.png", "blue_circle_black_140x112.png"]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """imgs/ with three images of different sizes, a file that is not an image, notes.txt."""
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    for i, name in enumerate(SHAPES):
        shutil.copy(assets_dir() / "demo" / "images" / name, tmp_path / "imgs" / ("sub" if i == 2 else "") / name)
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not an image")
    (tmp_path / "imgs" / "notes.txt").write_text("hello")
    monkeypatch.chdir(tmp_path)
    return tmp_path


GOOD = [
    {"image": f"imgs/{SHAPES[0]}", "prompt": "What color is the shape?"},
    {"images": [f"imgs/{SHAPES[1]}", f"imgs/sub/{SHAPES[2]}"], "prompt": "Compare <image> with <image>.",
     "system": "Answer in one word."},
    {"image": f"imgs/{SHAPES[1]}", "question": "Describe the image."},
]
BAD = [  # (line, the located message expected in the log)
    ('{"image": "imgs/missing.png", "prompt": "x"}', 'q.jsonl:4: field "image": image \'imgs/missing.png\' not found'),
    ("not json", "q.jsonl:5: not a valid JSON line"),
    ('{"image": "../a.png", "prompt": "x"}', 'q.jsonl:6: field "image": image \'../a.png\' is outside'),
    ('{"image": "imgs/broken.png"}', 'q.jsonl:7: field "prompt" is missing (or give --prompt'),
    ('{"image": "imgs/broken.png", "prompt": "x"}', 'q.jsonl:8: field "image": cannot read image'),
    ('{"image": "http://example.com/a.png", "prompt": "x"}', 'q.jsonl:9: field "image": image '
                                                             "'http://example.com/a.png' is a URL; fetching URLs is off"),
    ('{"image": "imgs/broken.png", "prompt": "<image> <image>"}', 'q.jsonl:10: field "prompt" has 2 <image> marker(s)'),
]


def write_requests(path):
    path.write_text("".join(json.dumps(row) + "\n" for row in GOOD) + "".join(line + "\n" for line, _ in BAD))


def one_at_a_time(rows, max_new_tokens):
    engine = InferenceEngine.load(model="tiny/qwen2-vl")
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    return [engine.answer([Request(row.get("prompt", row.get("question")), row.get("images", [row.get("image")]),
                                   system=row.get("system"))], settings)[0] for row in rows]


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_batch_equals_one_at_a_time_and_skips_bad_lines_with_their_place(workdir, capsys):
    write_requests(workdir / "q.jsonl")
    code = main(["infer", "--model", "tiny/qwen2-vl", "--images", "q.jsonl", "--output", "preds.jsonl",
                 "--batch-size", "3", "--max-new-tokens", "6"])
    log = capsys.readouterr().err
    assert code == 1  # something was skipped
    for _, message in BAD:
        assert f"mmlora: skipped {message}" in log
    assert log.strip().splitlines()[-1] == "mmlora: answered 3 request(s) into preds.jsonl; skipped 7 (see above)"
    assert "\r" not in log  # no progress bar off a terminal
    lines = read_lines(workdir / "preds.jsonl")
    expected = one_at_a_time(GOOD, 6)
    assert [line.pop("prediction") for line in lines] == expected
    assert lines == [GOOD[0], GOOD[1], {"image": f"imgs/{SHAPES[1]}", "prompt": "Describe the image."}]


def test_an_interrupted_run_keeps_its_answers_and_resume_answers_only_the_rest(workdir, capsys, monkeypatch):
    write_requests(workdir / "q.jsonl")
    out = workdir / "preds.jsonl"
    calls, real_answer = [], InferenceEngine.answer

    def interrupted_after_one_batch(self, requests, settings=None, batch_size=8):
        calls.append(len(requests))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_answer(self, requests, settings, batch_size)

    monkeypatch.setattr(InferenceEngine, "answer", interrupted_after_one_batch)
    args = ["infer", "--model", "tiny/qwen2-vl", "--images", "q.jsonl", "--output", "preds.jsonl",
            "--batch-size", "2", "--max-new-tokens", "6"]
    assert main(args) == 130
    assert [line["prompt"] for line in read_lines(out)] == [GOOD[0]["prompt"], GOOD[1]["prompt"]]

    with open(out, "a") as handle:  # killed while writing: a cut-off last line
        handle.write('{"image": "imgs/x.png", "predic')
    assert main(args) == 2
    assert "exists: pass --resume" in capsys.readouterr().err
    monkeypatch.setattr(InferenceEngine, "answer", real_answer)
    assert main(args + ["--resume"]) == 1
    assert "answered 1 request(s) into preds.jsonl; 2 already in the file; skipped 7" in capsys.readouterr().err
    lines = read_lines(out)
    assert [line.pop("prediction") for line in lines] == one_at_a_time(GOOD, 6)
    assert len(lines) == 3


def test_a_folder_is_answered_image_by_image_in_path_order(workdir, capsys):
    code = main(["infer", "--model", "tiny/qwen2-vl", "--images", "imgs", "--prompt", "Describe.",
                 "--output", "preds.jsonl", "--max-new-tokens", "4", "--system", "Be brief."])
    log = capsys.readouterr().err
    assert code == 1
    assert "mmlora: 1 file(s) under imgs are not images by their extension; left alone." in log
    assert "mmlora: skipped imgs/broken.png: cannot read image" in log
    lines = read_lines(workdir / "preds.jsonl")
    assert [line["image"] for line in lines] == [f"imgs/{SHAPES[0]}", f"imgs/{SHAPES[1]}", f"imgs/sub/{SHAPES[2]}"]
    assert all(line["prompt"] == "Describe." and line["system"] == "Be brief." for line in lines)


def test_several_images_in_one_prompt_print_one_answer(workdir, capsys):
    code = main(["infer", "--model", "tiny/qwen2-vl", "--image", f"imgs/{SHAPES[0]}", "--image",
                 f"imgs/sub/{SHAPES[2]}", "--prompt", "Compare <image> with <image>.", "--max-new-tokens", "6"])
    printed = capsys.readouterr().out.strip()
    assert code == 0
    row = {"images": [f"imgs/{SHAPES[0]}", f"imgs/sub/{SHAPES[2]}"], "prompt": "Compare <image> with <image>."}
    assert printed == one_at_a_time([row], 6)[0]


def test_resume_refuses_a_file_that_is_not_an_answers_file(tmp_path):
    other = tmp_path / "data.jsonl"
    other.write_text('{"image": "a.png", "answer": "red"}\n')
    with pytest.raises(MmloraError, match=r"data\.jsonl:1: not an answer line of `mmlora infer`"):
        answered_keys(other)


@pytest.mark.parametrize("extra, message", [
    (["--images", "imgs"], "--prompt is required"),
    (["--images", "imgs", "--prompt", "x"], "--images needs --output FILE.jsonl"),
    (["--images", "q.jsonl", "--output", "p.jsonl"], "--images q.jsonl does not exist"),
    (["--images", "imgs/notes.txt", "--output", "p.jsonl"], "expected a folder or a .jsonl file"),
    (["--image", "imgs", "--prompt", "x"], "--image imgs is a directory"),
    (["--image", f"imgs/{SHAPES[0]}", "--prompt", "<image> <image>"], "--prompt has 2 <image> marker(s)"),
    (["--images", "imgs", "--prompt", "x", "--output", "imgs"], "--output imgs is a folder"),
])
def test_bad_arguments_are_one_line_before_the_model_loads(workdir, capsys, extra, message):
    assert main(["infer", "--model", "tiny/qwen2-vl", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mmlora: error: ") and message in err[0], err


def test_an_output_that_is_the_input_file_is_refused_before_the_model_loads(workdir, capsys):
    write_requests(workdir / "q.jsonl")
    for resume in ([], ["--resume"]):
        assert main(["infer", "--model", "tiny/qwen2-vl", "--images", "imgs/../q.jsonl", "--output", "q.jsonl",
                     *resume]) == 2
        assert capsys.readouterr().err.strip() == ("mmlora: error: --output q.jsonl is the --images file itself; "
                                                   "answers go to a file of their own: choose another --output.")


@pytest.mark.parametrize("line, message", [
    ('{"image": 5, "prompt": "x"}', 'field "image" is 5 (a number): expected a path or URL as text'),
    ('{"images": ["a.png", 3], "prompt": "x"}', 'field "images"[1] is 3 (a number): expected a path or URL'),
    ('{"images": "a.png", "prompt": "x"}', 'field "images" is "a.png" (text): expected a non-empty list'),
    ('{"images": [], "prompt": "x"}', 'field "images" is empty: expected a non-empty list'),
    ('{"image": "", "prompt": "x"}', 'field "image" is empty: expected a path or URL as text'),
    ('{"prompt": "x"}', 'field "image" (a path or URL) or "images" (a list of them) is missing'),
    ('["a.png", "x"]', 'expected a JSON object with "image" and "prompt", got list'),
    ('{"image": "a.png", "prompt": ["x"]}', 'field "prompt" is ["x"] (a list): expected the prompt as text'),
    ('{"image": "a.png", "question": 7}', 'field "question" is 7 (a number): expected the prompt as text'),
    ('{"image": "a.png", "prompt": "  "}', 'field "prompt" is empty: expected the prompt as text'),
    ('{"image": "a.png", "question": "<image> <image>"}', 'field "question" has 2 <image> marker(s) but there is 1'),
    ('{"image": "a.png", "promt": "What color?"}', 'field "promt" is not a request field: did you mean "prompt"?'),
    ('{"imgae": "a.png", "prompt": "x"}', 'field "imgae" is not a request field: did you mean "image"?'),
    # text the encoder refuses: skipped as its line, not a failed batch
    ('{"image": "a.png", "prompt": "sur \\ud800 x"}', "field 'prompt' holds a lone surrogate \\ud800 at character 5"),
    ('{"image": "a.png", "prompt": "x", "system": "\\udb80\\udc01"}', 'field "system" holds characters of '
                                                                   "Unicode's Supplementary Private Use Area-A"),
])
def test_a_bad_jsonl_line_names_its_field_and_what_is_wrong(tmp_path, line, message):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "q.jsonl").write_text(line + "\n")
    (found,) = items_from_jsonl(tmp_path / "q.jsonl", "the --prompt default", None, ImageRules())
    assert str(found).startswith(f"{tmp_path / 'q.jsonl'}:1: {message}")


def test_other_fields_of_a_line_are_left_alone_but_its_id_is_repeated(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    lines = [{"image": "a.png", "question": "Which?", "question_id": 7, "answers": ["red"], "id": "x1"},
             {"image": "a.png", "prompt": "Which?", "id": 12345678901234567890},
             {"image": "a.png", "prompt": "Which?", "id": -0.5}, {"image": "a.png", "prompt": "Which?"}]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    found = list(items_from_jsonl(tmp_path / "q.jsonl", None, None, ImageRules()))
    assert [item.shown for item in found] == [{"id": "x1", "image": "a.png", "prompt": "Which?"},
                                              {"id": 12345678901234567890, "image": "a.png", "prompt": "Which?"},
                                              {"id": -0.5, "image": "a.png", "prompt": "Which?"},
                                              {"image": "a.png", "prompt": "Which?"}]


@pytest.mark.parametrize("line, message", [
    ('{"image": "a.png", "prompt": "x", "id": {"n": 1}}', 'field "id" is {"n": 1} (an object): expected text or a '
                                                         "number, which its answer line repeats"),
    ('{"image": "a.png", "prompt": "x", "id": [1]}', 'field "id" is [1] (a list): expected text or a number'),
    ('{"image": "a.png", "prompt": "x", "id": true}', 'field "id" is true (true/false): expected text or a number'),
    ('{"image": "a.png", "prompt": "x", "id": null}', 'field "id" is empty: expected text or a number'),
    ('{"image": "a.png", "prompt": "x", "id": " "}', 'field "id" is empty: expected text or a number'),
    ('{"image": "a.png", "prompt": "x", "id": NaN}', 'field "id" is NaN or infinite (a number): expected text'),
])
def test_an_id_that_is_not_text_or_a_number_skips_its_line(tmp_path, line, message):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "q.jsonl").write_text(line + "\n")
    (found,) = items_from_jsonl(tmp_path / "q.jsonl", None, None, ImageRules())
    assert str(found).startswith(f"{tmp_path / 'q.jsonl'}:1: {message}")


def test_a_repeated_id_skips_the_later_line_naming_the_first(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    lines = [{"image": "missing.png", "prompt": "x", "id": 7}, {"image": "a.png", "prompt": "y", "id": "7"},
             {"image": "a.png", "prompt": "z", "id": 7}]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    found = list(items_from_jsonl(tmp_path / "q.jsonl", None, None, ImageRules()))
    assert "image 'missing.png' not found" in str(found[0])  # skipped for its image, its id still taken
    assert found[1].shown["id"] == "7"  # text, not the number 7: another id, as the output writes them
    assert str(found[2]) == (f"{tmp_path / 'q.jsonl'}:3: field \"id\" is 7, the id of {tmp_path / 'q.jsonl'}:1 too: "
                             "each line needs its own id to tell its answer apart")


def test_resume_matches_answers_by_id_and_old_answers_without_ids_as_before(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    rows = [{"id": "q1", "image": "a.png", "prompt": "x"}, {"id": "q2", "image": "a.png", "prompt": "x"}]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    items = list(items_from_jsonl(tmp_path / "q.jsonl", None, None, ImageRules()))
    keys = [line_key(item.shown) for item in items]
    without_ids = [line_key(item.shown, with_id=False) for item in items]
    out = tmp_path / "preds.jsonl"
    # written before the input had ids (or by an older mmlora): matched by image and prompt
    out.write_text(json.dumps({"image": "a.png", "prompt": "x", "prediction": "red"}) + "\n")
    assert unanswered(keys, answered_keys(out)[0], out, "q.jsonl", without_ids) == [1]
    # an answer carries its id: it answers that request only, wherever it stands in the input
    out.write_text(json.dumps({"id": "q2", "image": "a.png", "prompt": "x", "prediction": "red"}) + "\n")
    assert unanswered(keys, answered_keys(out)[0], out, "q.jsonl", without_ids) == [0]
    out.write_text(json.dumps({"id": "q9", "image": "a.png", "prompt": "x", "prediction": "red"}) + "\n")
    with pytest.raises(MmloraError, match=r"1 of its 1 answer line\(s\) \(first: line 1\) match no request of "
                                          r"q\.jsonl, so it answers another input \(or another --prompt / --system, "
                                          r"or other ids\)"):
        unanswered(keys, answered_keys(out)[0], out, "q.jsonl", without_ids)


def test_resume_answers_a_request_asked_twice_twice(tmp_path):
    out = tmp_path / "preds.jsonl"
    out.write_text(json.dumps({"image": "a.png", "prompt": "x", "prediction": "red"}) + "\n")
    keys, torn = answered_keys(out)
    same = json.dumps({"image": "a.png", "images": None, "prompt": "x", "system": None}, sort_keys=True)
    other = json.dumps({"image": "b.png", "images": None, "prompt": "x", "system": None}, sort_keys=True)
    assert unanswered([same, other, same], keys, out, "q.jsonl") == [1, 2]


def test_resume_refuses_the_answers_of_another_input_and_warns_of_stray_lines(workdir, capsys):
    write_requests(workdir / "q.jsonl")
    (workdir / "other.jsonl").write_text(json.dumps({"image": "elsewhere.png", "prompt": "?", "prediction": "a"}) + "\n")
    code = main(["infer", "--model", "tiny/qwen2-vl", "--images", "q.jsonl", "--output", "other.jsonl", "--resume"])
    assert code == 2  # before any weights load
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "mmlora: error: --output other.jsonl: 1 of its 1 answer line(s) (first: line 1) match no request of q.jsonl, "
        "so it answers another input (or another --prompt / --system, or other ids); choose another --output for "
        "this one.")
    first = json.dumps({"image": GOOD[0]["image"], "prompt": GOOD[0]["prompt"], "prediction": "x"})
    (workdir / "mixed.jsonl").write_text(first + "\n" + (workdir / "other.jsonl").read_text())
    keys, _ = answered_keys(workdir / "mixed.jsonl")
    requests = [line_key(GOOD[0]), line_key(GOOD[1])]
    assert unanswered(requests, keys, workdir / "mixed.jsonl", "q.jsonl") == [1]
    assert capsys.readouterr().err.strip() == (
        f"mmlora: --output {workdir / 'mixed.jsonl'}: 1 of its 2 answer line(s) (first: line 2) match no request of "
        "q.jsonl (the input was edited?); they are kept.")


def test_an_output_under_a_file_says_it_is_a_file(tmp_path):
    from mmlora.inference.predictions import check_output

    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(MmloraError, match=r"^--output .*a.png/out.jsonl: .*a.png is a file, not a folder"):
        check_output(tmp_path / "a.png" / "out.jsonl", resume=False)


def test_a_full_disk_while_writing_answers_is_one_line_saying_how_to_continue():
    writer = PredictionWriter(Path("/dev/full"))  # every write fails: no space left on device
    with pytest.raises(MmloraError, match=r"^--output /dev/full: writing answers failed \(No space left on device\) "
                                          r"after 0 line\(s\) of this run; make room and rerun with --resume"):
        writer.write([{"image": "a.png", "prompt": "x", "prediction": "red"}])
    writer.close()


def test_a_prompt_flag_with_reserved_characters_is_refused_before_the_model_loads(demo_image):
    from mmlora.inference.inputs import items_from_flags

    with pytest.raises(MmloraError, match=r"^--prompt holds characters of Unicode's Supplementary Private Use Area-A"):
        items_from_flags([str(demo_image)], "what \U000F0001 is it", None, ImageRules())
