"""The training console: readable lines, best-so-far, a summary, no bars in a log file."""

import io
import json
import subprocess
import sys

import pytest

from transformers import PrinterCallback, ProgressCallback, TrainerState

from mmlora.config.loading import load_recipe
from mmlora.training.console import QuietProgress, TrainingConsole, attach_console, progress_bars_wanted


def feed(console, entries, total=100):
    """Run Trainer-shaped log entries through the console; returns what it printed."""
    out = io.StringIO()
    console.stream = out
    state = TrainerState(max_steps=total)
    console.on_train_begin(None, state, None)
    for step, logs in entries:
        state.global_step = step
        console.on_log(None, state, None, logs=dict(logs))
    state.global_step = entries[-1][0]
    console.on_train_end(None, state, None)
    return out.getvalue().splitlines()


def test_one_plain_line_per_logging_step_with_step_and_total():
    lines = feed(TrainingConsole("runs/x"), [
        (10, {"loss": 1.234567, "grad_norm": 0.87234, "learning_rate": 9.5123e-05, "epoch": 0.4}),
    ])
    assert lines[0] == "step 10/100  loss 1.2346  lr 9.51e-05  grad norm 0.8723  epoch 0.40"
    assert not any(ch in "".join(lines) for ch in "{}'\"")  # no dicts, no quoted strings


def test_eval_lines_carry_the_best_so_far_and_final_metrics_come_last():
    lines = feed(TrainingConsole("runs/x", best_metric="loss"), [
        (50, {"eval_loss": 0.9, "eval_runtime": 1.0, "eval_samples_per_second": 3.0, "epoch": 1.0}),
        (100, {"final_vqa_accuracy": 0.5, "final_exact_match": 0.4, "final_anls": 0.6}),
        (100, {"eval_loss": 1.1, "eval_runtime": 1.0, "epoch": 2.0}),
        (100, {"train_runtime": 12.0, "train_loss": 1.5, "total_flos": 1.0, "epoch": 2.0}),
    ])
    assert lines[0] == "eval  step 50/100  eval loss 0.9000  (best eval loss 0.9000 at step 50)"
    assert lines[1] == "eval  step 100/100  eval loss 1.1000  (best eval loss 0.9000 at step 50)"
    assert lines[2].startswith("done: 100/100 steps in ")
    assert "mean train loss 1.5000" in lines[3]
    assert lines[4] == "best eval loss 0.9000 at step 50  (kept in best/)"
    assert lines[5] == "final on data.eval: vqa_accuracy 0.5000  exact_match 0.4000  anls 0.6000"
    assert lines[6] == "adapter: runs/x; best adapter: runs/x/best"


def test_generation_metrics_track_best_of_the_chosen_metric():
    lines = feed(TrainingConsole("runs/x", best_metric="vqa_accuracy", vqa_normalization="official"), [
        (20, {"eval_vqa_accuracy": 0.3, "eval_exact_match": 0.2, "eval_anls": 0.5}),
        (40, {"eval_vqa_accuracy": 0.2, "eval_exact_match": 0.3, "eval_anls": 0.4}),
    ], total=40)
    assert lines[1] == ("eval  step 40/40  vqa_accuracy[official] 0.2000  exact_match 0.3000  anls 0.4000  "
                        "(best vqa_accuracy[official] 0.3000 at step 20)")
    assert "best eval exact_match 0.3000 at step 40" in lines


def test_an_interrupted_run_says_where_it_stopped_and_names_no_adapter():
    lines = feed(TrainingConsole("runs/x"), [(37, {"loss": 2.0, "learning_rate": 1e-4})])
    assert lines[1].startswith("stopped at step 37/100 in ")
    assert not any(line.startswith("adapter:") for line in lines)


def test_bars_only_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert progress_bars_wanted(Terminal()) and not progress_bars_wanted(io.StringIO())


def test_attach_console_replaces_the_trainers_dict_printing(tiny, tmp_path):
    from transformers import Trainer, TrainingArguments

    for disable_tqdm, bar in ((True, None), (False, QuietProgress)):
        args = TrainingArguments(output_dir=str(tmp_path), disable_tqdm=disable_tqdm, report_to=[], use_cpu=True)
        trainer = Trainer(model=tiny.model, args=args)
        attach_console(trainer, load_recipe("tiny_vqa"))
        kinds = [type(cb) for cb in trainer.callback_handler.callbacks]
        assert PrinterCallback not in kinds and ProgressCallback not in kinds
        assert TrainingConsole in kinds and (bar is None or bar in kinds)


def test_train_in_a_log_file_prints_readable_lines_and_no_carriage_returns(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "mmlora", "train", "tiny_vqa", "train.max_steps=2", "train.logging_steps=1",
         "train.eval_strategy=never", "eval.generate_at_end=false", "train.batch_size=2", "--output-dir", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("step 1/2  loss ") and "  lr " in line and "grad norm" in line for line in lines)
    assert any(line.startswith("done: 2/2 steps in ") for line in lines)
    assert f"adapter: {out}" in lines
    assert not any(line.startswith("{") for line in lines)
    assert "\r" not in result.stderr  # no progress bar redrawn into a log file


@pytest.mark.slow
def test_a_resumed_run_ends_with_the_uninterrupted_runs_best_and_losses(tmp_path, capsys):
    """The console of a run stopped at its checkpoint and resumed says what the uninterrupted run
    says about the best evaluation (counting the evaluations before the checkpoint, as best/ does)
    and the last loss; its mean train loss says which steps it covers."""
    from mmlora.training.train import train
    from tests.training.test_reliability import SignalAtStep

    def recipe(out):
        return load_recipe("tiny_vqa", [
            f"train.output_dir={out}", "train.max_steps=4", "train.save_steps=2", "train.logging_steps=2",
            "train.eval_strategy=never", "eval.best_metric=vqa_accuracy", "eval.generate_steps=1",
            "eval.generate_subset=4", "eval.generate_at_end=false", "lora.projector=frozen"])

    def console(out: str, run) -> list[str]:
        return [line.replace(str(run), "RUN") for line in out.splitlines()
                if line.startswith(("eval  step", "best eval", "last logged", "adapter:"))]

    train(recipe(tmp_path / "full"))
    full = console(capsys.readouterr().out, tmp_path / "full")
    assert train(recipe(tmp_path / "resumed"), callbacks=[SignalAtStep(2)]).interrupted_by is not None
    before = console(capsys.readouterr().out, tmp_path / "resumed")
    train(recipe(tmp_path / "resumed"), resume="latest")
    out = capsys.readouterr().out
    after = console(out, tmp_path / "resumed")
    assert before[:2] == full[:2]  # the evaluations at steps 1 and 2
    # eval lines of steps 3 and 4, the best values (step 1's, also kept in best/), the adapter
    assert [line for line in after if not line.startswith("last logged")] == [
        line for line in full[2:] if not line.startswith("last logged")]
    assert all(line.endswith("(best vqa_accuracy[always] 0.0000 at step 1)") for line in after if line.startswith("eval"))
    assert "best eval vqa_accuracy[always] 0.0000 at step 1  (kept in best/)" in after
    # the same last loss; the mean covers the resumed steps (here the one logged loss: steps 3-4)
    last = [line.split("  ")[0] for line in full if line.startswith("last logged")][0]
    assert [line for line in after if line.startswith("last logged")] == [
        f"{last}  mean train loss {last.removeprefix('last logged loss ')} (steps 3-4, this run)"]
    # the log and the model card say so too (the Trainer's train_loss covers this call's steps)
    final = json.loads((tmp_path / "resumed" / "train_log.jsonl").read_text().splitlines()[-1])
    assert (final["step"], final["train_loss_first_step"]) == (4, 3)
    assert (f"- training loss (mean over steps 3-4, after the resumed checkpoint): {final['train_loss']:.4g} at step 4"
            in (tmp_path / "resumed" / "README.md").read_text())
    assert "- training loss (mean over the run): " in (tmp_path / "full" / "README.md").read_text()
