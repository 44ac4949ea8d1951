"""`mmlora infer --images DIR|FILE.jsonl --output`: batched answers equal to one-at-a-time
answers, bad lines skipped with a located line, nothing answered lost, `--resume`."""

from __future__ import annotations

import json
import shutil

import pytest

from mmlora.cli import main
from mmlora.config.paths import assets_dir
from mmlora.errors import MmloraError
from mmlora.inference.engine import GenerationSettings, InferenceEngine, Request
from mmlora.inference.predictions import answered_keys

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
    ('{"image": "imgs/broken.png"}', 'q.jsonl:7: field "prompt" is missing, empty or not text'),
    ('{"image": "imgs/broken.png", "prompt": "x"}', 'q.jsonl:8: field "image": cannot read image'),
    ('{"image": "http://example.com/a.png", "prompt": "x"}', 'q.jsonl:9: field "image": image '
                                                             "'http://example.com/a.png' is a URL; fetching URLs is off"),
    ('{"image": "imgs/broken.png", "prompt": "<image> <image>"}', "q.jsonl:10: prompt has 2 <image> marker(s)"),
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
