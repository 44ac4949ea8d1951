"""`mmlora infer --output`: the answers file records what made it (preds.jsonl.meta.json), so
`--resume` with another model, adapter, pixel bounds or generation settings is refused in one
line instead of mixing answers; and one run at a time writes an --output (a flock the kernel
releases when the run ends, killed or not)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from mmlora.cli import main
from mmlora.config.paths import assets_dir
from mmlora.errors import MmloraError
from mmlora.inference.answers_record import check_record, record_path, run_record
from mmlora.inference.engine import GenerationSettings
from mmlora.inference.output_lock import OutputLock

SMALL = assets_dir() / "demo" / "images" / "blue_circle_black_112x112.png"
ROWS = [{"id": 1, "image": "a.png", "prompt": "What color is the shape?"},
        {"id": 2, "image": "a.png", "prompt": "Describe the image."},
        {"id": 3, "image": "a.png", "prompt": "What shape is it?"}]
INFER = ["infer", "--model", "tiny/qwen2-vl", "--images", "q.jsonl", "--output", "preds.jsonl"]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    shutil.copy(SMALL, tmp_path / "a.png")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_requests(workdir, rows):
    (workdir / "q.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def last_err(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_resume_with_other_settings_is_refused_naming_them_and_the_same_settings_resume(workdir, capsys):
    write_requests(workdir, ROWS[:1])
    assert main(INFER + ["--max-new-tokens", "4"]) == 0
    record = json.loads((workdir / "preds.jsonl.meta.json").read_text())
    assert record == {"model": "tiny/qwen2-vl", "adapter": None, "adapter_sha256": None, "min_pixels": 3136,
                      "max_pixels": 200704, "max_new_tokens": 4, "temperature": 0.0, "top_p": 1.0,
                      "num_beams": 1, "seed": None}
    write_requests(workdir, ROWS[:2])
    answers = (workdir / "preds.jsonl").read_text()
    for changed, named in ((["--max-new-tokens", "8"], "--max-new-tokens 4 (this run: 8)"),
                           (["--max-new-tokens", "4", "--temperature", "0.7", "--seed", "3"],
                            "--temperature 0.0 (this run: 0.7); --seed none (this run: 3)"),
                           (["--max-new-tokens", "4", "--max-pixels", "50176"], "--max-pixels 200704 (this run: 50176)"),
                           (["--max-new-tokens", "4", "--model", "tiny/llava"], "--model tiny/qwen2-vl (this run: "
                                                                                 "tiny/llava)")):
        assert main(INFER + changed + ["--resume"]) == 2
        assert last_err(capsys) == (f"mmlora: error: --output preds.jsonl was answered with other settings: {named}. "
                                    "Resume with the same settings, or rerun without --resume into a new --output.")
    assert (workdir / "preds.jsonl").read_text() == answers  # nothing added
    # the same settings (the batch size is not one: greedy answers do not depend on it)
    assert main(INFER + ["--max-new-tokens", "4", "--batch-size", "3", "--resume"]) == 0
    assert last_err(capsys) == "mmlora: answered 1 request(s) into preds.jsonl; 1 already in the file"
    assert [json.loads(line)["id"] for line in (workdir / "preds.jsonl").read_text().splitlines()] == [1, 2]


def test_an_answers_file_without_a_record_resumes_with_one_warning_and_gets_one(workdir, capsys):
    write_requests(workdir, ROWS[:2])
    (workdir / "preds.jsonl").write_text(json.dumps({**ROWS[0], "prediction": "blue"}) + "\n")  # an older mmlora's
    assert main(INFER + ["--max-new-tokens", "4", "--resume"]) == 0
    err = capsys.readouterr().err
    assert ("mmlora: --output preds.jsonl has no record of the model and settings that answered it "
            "(preds.jsonl.meta.json: written by an older mmlora); resuming without checking them.\n") in err
    assert err.strip().splitlines()[-1] == "mmlora: answered 1 request(s) into preds.jsonl; 1 already in the file"
    assert json.loads((workdir / "preds.jsonl.meta.json").read_text())["max_new_tokens"] == 4


def write_adapter(folder, value: float):
    folder.mkdir(exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "tiny/qwen2-vl"}))
    save_file({"base_model.model.lm_head.lora_A.weight": torch.full((2, 4), value)},
              str(folder / "adapter_model.safetensors"))


def test_retrained_weights_in_the_same_adapter_folder_count_as_another_adapter_a_moved_one_not(tmp_path):
    write_adapter(tmp_path / "run", 0.5)
    settings = GenerationSettings(max_new_tokens=4)
    before = run_record(None, str(tmp_path / "run"), None, None, settings)
    assert before["model"] == "tiny/qwen2-vl" and before["adapter"] == str(tmp_path / "run")
    output = tmp_path / "preds.jsonl"
    record_path(output).write_text(json.dumps(before))
    check_record(output, run_record(None, str(tmp_path / "run"), None, None, settings), has_answers=True)
    shutil.copytree(tmp_path / "run", tmp_path / "moved")  # the same weights elsewhere: the same adapter
    check_record(output, run_record(None, str(tmp_path / "moved"), None, None, settings), has_answers=True)
    write_adapter(tmp_path / "run", 0.25)
    after = run_record(None, str(tmp_path / "run"), None, None, settings)
    with pytest.raises(MmloraError, match=rf"^--output .*preds.jsonl was answered with other settings: the adapter's "
                                          rf"weights {before['adapter_sha256'][:12]} \(this run: "
                                          rf"{after['adapter_sha256'][:12]}\)\. Resume with the same settings"):
        check_record(output, after, has_answers=True)


HOLDER = """
import sys
from pathlib import Path
from mmlora.inference.output_lock import OutputLock
lock = OutputLock(Path(sys.argv[1]))
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_second_run_on_the_same_output_is_refused_until_the_first_ends_even_killed(workdir, capsys):
    write_requests(workdir, ROWS[:1])
    first = subprocess.Popen([sys.executable, "-c", HOLDER, "preds.jsonl"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline() == "locked\n"
        assert main(INFER + ["--max-new-tokens", "4"]) == 2
        assert last_err(capsys) == (f"mmlora: error: --output preds.jsonl is being written by another `mmlora infer` "
                                    f"(process {first.pid}); wait for it to end (then --resume), or choose another "
                                    "--output.")
        assert not (workdir / "preds.jsonl").exists() and not (workdir / "preds.jsonl.meta.json").exists()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    OutputLock(workdir / "preds.jsonl").release()  # the kernel released the killed run's lock
