"""Interrupted, damaged, extended and repeated runs (#12 "Runs"): no lost adapter, no silently
different run, no leftovers that block a rerun, no mixed output folder."""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from mmlora.cli import main
from mmlora.config.loading import load_recipe
from mmlora.errors import MmloraError
from mmlora.training.checkpoints import MARKER, find_checkpoint
from mmlora.training.train import interrupted_message, train
from tests.training.test_reliability import SignalAtStep

pytestmark = pytest.mark.slow

QUIET = ["train.logging_steps=1", "train.eval_strategy=never", "eval.generate_at_end=false"]


def recipe(out, *extra):
    return load_recipe("tiny_vqa", [f"train.output_dir={out}", *QUIET, *extra])


def losses(history):
    return {h["step"]: h["loss"] for h in history if "loss" in h}


def mmlora_command(words):
    assert words[0] == "mmlora"
    return [sys.executable, "-m", "mmlora", *words[1:]]


def test_signal_during_final_evaluation_keeps_the_adapter(tmp_path, monkeypatch):
    import mmlora.evaluation.generate

    real, calls = mmlora.evaluation.generate.generate_answers, []

    def signalled(*args, **kwargs):  # the user presses Ctrl-C while the final evaluation runs
        calls.append(1)
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(mmlora.evaluation.generate, "generate_answers", signalled)
    overrides = ["train.max_steps=3", "train.save_steps=0", "eval.generate_at_end=true", "eval.limit=4"]
    result = train(recipe(tmp_path, *overrides))
    assert calls and result.interrupted_by == signal.SIGTERM
    # save_steps=0: no checkpoint; the trained adapter itself was saved before the evaluation
    assert result.checkpoint is None and result.adapter_saved
    from peft import get_peft_model_state_dict

    saved = load_file(tmp_path / "adapter_model.safetensors")
    trained = get_peft_model_state_dict(result.model)  # what the model holds after training
    assert saved.keys() == trained.keys() and saved
    for key, value in trained.items():
        assert torch.equal(saved[key], value.cpu()), key
    assert (tmp_path / "train_log.jsonl").is_file() and (tmp_path / "recipe.yaml").is_file()
    message = interrupted_message(result, "tiny_vqa", overrides)
    assert f"adapter is saved in {tmp_path}" in message
    assert message.endswith(shlex.join(["mmlora", "eval", "tiny_vqa", *overrides, "--adapter", str(tmp_path)]))


def test_printed_resume_command_continues_this_run(tmp_path, monkeypatch):
    out = tmp_path / "my run"  # a space: the printed command must be shell-quoted
    args = ["train", "tiny_vqa", "train.max_steps=8", "train.save_steps=1", *QUIET, "--output-dir", str(out)]
    proc = subprocess.Popen(mmlora_command(["mmlora", *args]), cwd=tmp_path, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and not (out / "checkpoint-1" / MARKER).is_file():
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    command = stderr.strip().splitlines()[-1].split("Resume with: ", 1)[1]
    assert shlex.split(command) == ["mmlora", *args, "--resume", "latest"]
    # The printed command, run through the CLI's entry point in this process (torch is imported
    # already) from the same folder.
    monkeypatch.chdir(tmp_path)
    assert main(shlex.split(command)[1:]) == 0
    assert (out / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "runs").exists()  # nothing went to the recipe's default output_dir


def interrupted_run(out, *extra):
    """Checkpoints at steps 2 and 4 of 6, stopped by SIGTERM at step 4."""
    stopped = train(recipe(out, "train.max_steps=6", "train.save_steps=2", *extra), callbacks=[SignalAtStep(4)])
    assert stopped.checkpoint.name == "checkpoint-4"
    return stopped


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    stopped = interrupted_run(tmp_path)
    newest = tmp_path / "checkpoint-4"
    truncate(newest / "optimizer.pt")
    with pytest.raises(MmloraError, match=r"checkpoint-4.*optimizer\.pt is damaged"):
        find_checkpoint(tmp_path, str(newest))  # named explicitly: refused, never half-loaded
    resumed = train(recipe(tmp_path, "train.max_steps=6", "train.save_steps=2"), resume="latest")
    assert "skipping damaged checkpoint-4 (optimizer.pt is damaged" in capsys.readouterr().err
    before, after = losses(stopped.log_history), losses(resumed.log_history)
    assert sorted(after) == list(range(1, 7))
    for step in (3, 4):  # redone from checkpoint-2: exactly the same steps
        assert after[step] == pytest.approx(before[step], rel=1e-6, abs=1e-7)


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    """A run of 4 steps with intact checkpoints at steps 2 and 4 (copied by each test)."""
    out = tmp_path_factory.mktemp("two_checkpoints")
    interrupted_run(out, "train.max_steps=4")
    return out


@pytest.mark.parametrize("damage, named", [
    ("truncate", "adapter_model.safetensors"), ("delete", "trainer_state.json"),
    ("delete", "rng_state.pth"), ("truncate", "scheduler.pt"),
])
def test_every_damaged_file_is_found_before_resuming(two_checkpoints, tmp_path, damage, named, capsys):
    run = tmp_path / "run"
    shutil.copytree(two_checkpoints, run)
    newest = run / "checkpoint-4"
    truncate(newest / named) if damage == "truncate" else (newest / named).unlink()
    assert find_checkpoint(run, "latest").name == "checkpoint-2"
    assert f"skipping damaged checkpoint-4 ({named}" in capsys.readouterr().err
    shutil.rmtree(run / "checkpoint-2")
    with pytest.raises(MmloraError, match=rf"No intact checkpoint.*checkpoint-4 \({named}"):
        find_checkpoint(run, "latest")


def test_resume_honours_new_intervals_and_extends_a_finished_run(tmp_path, capsys):
    base = ["train.lr_scheduler=linear", "train.warmup_ratio=0", "train.save_total_limit=null",
            "train.learning_rate=0.002"]
    first = train(recipe(tmp_path, *base, "train.max_steps=4", "train.save_steps=2", "train.logging_steps=2"))
    assert sorted(losses(first.log_history)) == [2, 4]
    assert (tmp_path / "checkpoint-4" / MARKER).is_file()  # the finished run's last checkpoint
    longer = recipe(tmp_path, *base, "train.max_steps=8", "train.save_steps=5", "train.logging_steps=1")
    result = train(longer, resume="latest")
    assert "learning-rate schedule" in capsys.readouterr().err
    logged = {h["step"]: h for h in result.log_history if "loss" in h}
    assert sorted(logged) == [2, 4, 5, 6, 7, 8]  # the new logging interval from step 5 on
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == [
        "checkpoint-2", "checkpoint-4", "checkpoint-5", "checkpoint-8"]  # the new save interval
    # Linear decay recomputed for 8 steps, continued at step 5 (not the finished run's 0).
    for step in (5, 6, 7, 8):
        assert logged[step]["learning_rate"] == pytest.approx(0.002 * (1 - (step - 1) / 8))
    state = json.loads((tmp_path / "checkpoint-8" / "trainer_state.json").read_text())
    assert (state["logging_steps"], state["save_steps"], state["max_steps"]) == (1, 5, 8)


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['MMLORA_PWNED']}",))


def test_pickled_adapter_is_refused_in_one_line(tmp_path, tiny, monkeypatch, capsys, demo_image):
    from mmlora.config.schema import LoraConfig
    from mmlora.models.lora import apply_lora, save_adapter

    adapter = tmp_path / "adapter"
    save_adapter(apply_lora(tiny.model, tiny.family, LoraConfig(r=4)), adapter)
    state = load_file(adapter / "adapter_model.safetensors")
    (adapter / "adapter_model.safetensors").unlink()
    marker = tmp_path / "pwned"
    monkeypatch.setenv("MMLORA_PWNED", str(marker))
    torch.save({**state, "extra": Payload()}, adapter / "adapter_model.bin")
    code = main(["infer", "--model", "tiny/qwen2-vl", "--adapter", str(adapter), "--image", str(demo_image),
                 "--prompt", "What color is the shape?"])
    err = capsys.readouterr().err
    assert code == 2
    (line,) = [text for text in err.splitlines() if text.startswith("mmlora: error:")]
    assert "adapter_model.bin holds pickled Python objects" in line and "safetensors" in line
    assert "Traceback" not in err and "UnpicklingError" not in err
    assert not marker.exists(), "a pickle payload ran"


def test_skipped_nonfinite_steps_are_recorded_in_log_and_state(tmp_path, monkeypatch):
    from mmlora.training.trainer import MmloraTrainer

    real, calls = MmloraTrainer.compute_loss, []

    def compute_loss(self, model, inputs, *args, **kwargs):
        loss = real(self, model, inputs, *args, **kwargs)
        calls.append(1)
        return loss * float("nan") if len(calls) in (2, 3) else loss

    monkeypatch.setattr(MmloraTrainer, "compute_loss", compute_loss)
    result = train(recipe(tmp_path, "train.max_steps=4", "train.save_steps=4"))
    assert result.skipped_steps == 2
    expected = [{"skipped_nonfinite": 1, "skipped_nonfinite_steps": n, "step": s} for n, s in ((1, 2), (2, 3))]
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [e for e in log if "skipped_nonfinite" in e] == expected
    state = json.loads((tmp_path / "checkpoint-4" / "trainer_state.json").read_text())
    assert [e for e in state["log_history"] if "skipped_nonfinite" in e] == expected


def test_a_start_that_failed_before_training_does_not_block_the_rerun(tmp_path):
    with pytest.raises(MmloraError, match="liger"):  # fails after the data pre-scan (CPU, no liger)
        train(recipe(tmp_path, "train.max_steps=1", "train.liger=true"))
    assert {p.name for p in tmp_path.iterdir()} <= {"data_report.json"}  # what a failed start leaves
    result = train(recipe(tmp_path, "train.max_steps=1", "train.save_steps=0"))
    assert (result.output_dir / "adapter_model.safetensors").is_file()


def test_demo_rerun_and_interruption_never_leave_a_mixed_folder(tmp_path, capsys):
    from mmlora.demo import run_demo

    out = tmp_path / "demo"
    short = [f"train.output_dir={out}", "train.max_steps=2", "eval.limit=2", "train.eval_strategy=never",
             "train.save_steps=0"]
    run_demo("tiny_vqa", [*short, "eval.generate_at_end=true"])
    printed = capsys.readouterr().out  # the training lines name the folder the user finds, not the staging one
    assert f"adapter: {out}\n" in printed and f"saved adapter, processor and recipe to {out}\n" in printed
    assert "staging" not in printed
    assert (out / "eval_metrics.json").is_file()
    run_demo("tiny_vqa", [*short, "eval.generate_at_end=false"])  # rerun: nothing of the first is left
    assert not (out / "eval_metrics.json").exists() and not (out / "eval_predictions.jsonl").exists()
    assert load_recipe(str(out / "recipe.yaml")).train.output_dir == str(out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    started = time.time()
    proc = subprocess.Popen(mmlora_command(["mmlora", "demo", *short, "train.max_steps=500"]),
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not any(
            p.stat().st_mtime >= started for p in tmp_path.rglob("data_report.json")):
        time.sleep(0.2)  # the new run has started writing
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 130, stderr
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no staging folder left
