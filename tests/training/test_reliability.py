"""Lost work cannot happen: exact resume, atomic checkpoints, signals, NaN guard, safe loading."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from mmlora.cli import main
from mmlora.config.loading import load_recipe
from mmlora.config.schema import ModelConfig
from mmlora.errors import MmloraError
from mmlora.models.tiny import TINY_MODELS
from mmlora.training.checkpoints import MARKER, STAGING, complete_checkpoints, find_checkpoint
from mmlora.training.train import train

pytestmark = pytest.mark.slow

N = 4  # steps before the interruption; the full run is 2N


def short_recipe(out, *extra):
    return load_recipe("tiny_vqa", [f"train.output_dir={out}", f"train.max_steps={2 * N}",
                                    "train.logging_steps=1", f"train.save_steps={N}",
                                    "train.eval_strategy=never", "eval.generate_at_end=false", *extra])


def step_losses(history):
    return {h["step"]: h["loss"] for h in history if "loss" in h}


class SignalAtStep(TrainerCallback):
    """Sends this process a signal at the end of one step, as a user or a scheduler would."""

    def __init__(self, step, signum=signal.SIGTERM):
        self.step, self.signum = step, signum

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def test_resume_is_exact(tmp_path):
    full = train(short_recipe(tmp_path / "full"))
    stopped = train(short_recipe(tmp_path / "resumed"), callbacks=[SignalAtStep(N)])
    assert stopped.interrupted_by == signal.SIGTERM
    assert stopped.checkpoint.name == f"checkpoint-{N}" and (stopped.checkpoint / MARKER).is_file()
    resumed = train(short_recipe(tmp_path / "resumed"), resume="latest")
    expected, got = step_losses(full.log_history), step_losses(resumed.log_history)
    assert sorted(expected) == sorted(got) == list(range(1, 2 * N + 1))
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), f"step {step}"
    a = load_file(tmp_path / "full" / "adapter_model.safetensors")
    b = load_file(tmp_path / "resumed" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-6, atol=1e-7)


def test_resume_refuses_a_changed_recipe_and_allows_harmless_changes(tmp_path):
    train(short_recipe(tmp_path, "train.max_steps=4", "train.save_steps=2"), callbacks=[SignalAtStep(2)])
    with pytest.raises(MmloraError, match=r"lora\.r: 16 -> 8.*train\.learning_rate"):
        train(short_recipe(tmp_path, "train.max_steps=4", "train.save_steps=2", "lora.r=8",
                           "train.learning_rate=0.1"), resume="latest")
    # logging and save intervals may change; the run continues from step 2 to step 4
    result = train(short_recipe(tmp_path, "train.max_steps=4", "train.save_steps=1", "train.logging_steps=1"),
                   resume="latest")
    assert sorted(step_losses(result.log_history)) == [1, 2, 3, 4]
    with pytest.raises(MmloraError, match="already reached train.max_steps"):
        train(short_recipe(tmp_path, "train.max_steps=4", "train.save_steps=1"), resume="latest")


def test_killed_checkpoint_write_leaves_previous_checkpoint_for_resume(tmp_path, monkeypatch):
    from mmlora.training.trainer import MmloraTrainer

    real_save = MmloraTrainer._save_optimizer_and_scheduler
    calls = []

    def dies_on_second_save(self, output_dir):
        calls.append(output_dir)
        if len(calls) == 2:
            raise OSError("simulated kill during checkpoint write")
        return real_save(self, output_dir)

    monkeypatch.setattr(MmloraTrainer, "_save_optimizer_and_scheduler", dies_on_second_save)
    with pytest.raises(OSError, match="simulated kill"):
        train(short_recipe(tmp_path))
    # the half-written checkpoint sits in staging; the complete one is what resume picks
    assert (tmp_path / STAGING / f"checkpoint-{2 * N}").is_dir()
    assert [p.name for p in complete_checkpoints(tmp_path)] == [f"checkpoint-{N}"]
    assert find_checkpoint(tmp_path, "latest").name == f"checkpoint-{N}"
    monkeypatch.setattr(MmloraTrainer, "_save_optimizer_and_scheduler", real_save)
    resumed = train(short_recipe(tmp_path), resume="latest")
    assert max(step_losses(resumed.log_history)) == 2 * N
    assert not (tmp_path / STAGING).exists()


def test_sigterm_to_a_training_process_saves_a_resumable_checkpoint(tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "mmlora", "train", "tiny_vqa", f"train.output_dir={out}",
            "train.max_steps=12", "train.save_steps=1000", "train.logging_steps=1",
            "train.eval_strategy=never", "eval.generate_at_end=false"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "checkpoint-0").exists():
        line = proc.stdout.readline()
        if line.startswith("step ") and " loss " in line:
            break  # training has logged a step (mmlora/training/console.py's line)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "--resume latest" in stderr and "Traceback" not in stderr
    checkpoint = find_checkpoint(out, "latest")
    step = int(checkpoint.name.split("-")[1])
    assert 0 < step < 12  # stopped mid-run: the signal is sent right after step 1's line
    # the resume through the CLI's entry point in this process (torch is imported already)
    assert main(args[3:] + ["--resume"]) == 0
    assert (out / "adapter_model.safetensors").is_file()


def poison(monkeypatch, bad):
    """Make the loss of the steps in `bad` (1-based, one micro-batch per step) NaN."""
    from mmlora.training.trainer import MmloraTrainer

    real = MmloraTrainer.compute_loss
    calls = []

    def compute_loss(self, model, inputs, *args, **kwargs):
        result = real(self, model, inputs, *args, **kwargs)
        if not model.training:
            return result  # evaluation passes are not training steps
        calls.append(1)
        if len(calls) in bad:
            return result * float("nan") if not isinstance(result, tuple) else (result[0] * float("nan"), result[1])
        return result

    monkeypatch.setattr(MmloraTrainer, "compute_loss", compute_loss)


def test_nonfinite_steps_are_skipped_and_counted(tmp_path, monkeypatch):
    poison(monkeypatch, bad={3, 4})
    result = train(short_recipe(tmp_path, "train.max_bad_steps=3"))
    assert result.skipped_steps == 2
    for name, param in result.model.named_parameters():
        assert torch.isfinite(param).all(), name
    assert (tmp_path / "adapter_model.safetensors").is_file()


def test_too_many_nonfinite_steps_stop_with_checkpoint_intact(tmp_path, monkeypatch):
    poison(monkeypatch, bad=range(N + 1, 100))
    with pytest.raises(MmloraError, match=rf"Stopped at step {N + 3}: 3 consecutive steps.*checkpoint-{N}"):
        train(short_recipe(tmp_path, "train.max_bad_steps=3"))
    checkpoint = find_checkpoint(tmp_path, "latest")
    assert checkpoint.name == f"checkpoint-{N}"
    weights = load_file(checkpoint / "adapter_model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert not (tmp_path / "adapter_model.safetensors").exists()  # no final save of a failed run


def test_existing_output_dir_is_not_overwritten(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(MmloraError, match="already holds files.*--overwrite"):
        train(short_recipe(tmp_path, "train.max_steps=1"))
    train(short_recipe(tmp_path, "train.max_steps=1", "train.save_steps=1"), overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    assert (tmp_path / "adapter_model.safetensors").is_file()


def test_low_disk_space_fails_before_training_with_numbers(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1024, 1024))
    with pytest.raises(MmloraError, match=r"checkpoints need about \d+ MiB, 0 MiB free"):
        train(short_recipe(tmp_path))


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['MMLORA_PWNED']}",))


def test_pickled_weights_are_refused_unless_weights_only(tmp_path, monkeypatch):
    from mmlora.models.loading import load_model_and_processor, save_tiny_model

    good = save_tiny_model("tiny/qwen2-vl", tmp_path / "good")
    state = load_file(good / "model.safetensors")
    (good / "model.safetensors").unlink()
    torch.save(state, good / "pytorch_model.bin")  # plain tensors: loads with weights_only=True
    loaded = load_model_and_processor(ModelConfig(name=str(good)), device="cpu")
    assert torch.equal(loaded.model.lm_head.weight, state["lm_head.weight"])

    evil = save_tiny_model("tiny/qwen2-vl", tmp_path / "evil")
    (evil / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    monkeypatch.setenv("MMLORA_PWNED", str(marker))
    torch.save({"lm_head.weight": Payload()}, evil / "pytorch_model.bin")
    with pytest.raises(MmloraError, match="pytorch_model.bin"):
        load_model_and_processor(ModelConfig(name=str(evil)), device="cpu")
    assert not marker.exists(), "a pickle payload ran"


def test_text_only_batch_still_runs_the_vision_tower_when_distributed(tiny):
    """The ZeRO-3 guard: a dummy image forward adds exactly zero to the loss."""
    from mmlora.config.schema import LoraConfig
    from mmlora.data.collate import TrainingCollator, encode_for_training
    from mmlora.data.samples import Sample, assistant_turn, user_turn
    from mmlora.models.lora import apply_lora
    from mmlora.training.train import dummy_vision_batch, training_arguments
    from mmlora.training.trainer import MmloraTrainer

    recipe = load_recipe("tiny_vqa", ["data.eval=null"])
    model = apply_lora(tiny.model, tiny.family, LoraConfig())
    batch = TrainingCollator(tiny.processor)([encode_for_training(
        tiny.processor, Sample([], [user_turn("Say hi.", 0), assistant_turn("hi")], "t"), 64)])
    calls = []
    tiny.model.model.visual.register_forward_hook(lambda *a: calls.append(1))
    args = training_arguments(recipe, "cpu")
    plain = MmloraTrainer(model=model, args=args, recipe=recipe, processor=tiny.processor)
    guarded = MmloraTrainer(model=model, args=args, recipe=recipe, processor=tiny.processor,
                            dummy_vision_batch=dummy_vision_batch(tiny.processor))
    loss_plain = plain.compute_loss(model, dict(batch))
    assert calls == []
    loss_guarded = guarded.compute_loss(model, dict(batch))
    assert calls == [1]
    assert loss_guarded.item() == loss_plain.item()


@pytest.mark.parametrize("model_id", sorted(TINY_MODELS))
def test_dummy_vision_batch_builds_for_every_family(model_id):
    """The ZeRO-3 guard's one-image batch must build for every family's image processor."""
    from mmlora.data.scan import load_data_processor
    from mmlora.training.train import dummy_vision_batch

    processor = load_data_processor(ModelConfig(name=model_id))
    batch = dummy_vision_batch(processor)
    assert batch["pixel_values"].numel() > 0
    assert (batch["input_ids"] == processor.image_token_id).sum() > 0
