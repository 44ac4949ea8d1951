"""Fine-tune: recipe -> model + LoRA -> HF Trainer with mmlora's collator -> adapter on disk.

The HF `Trainer` runs the loop (why: its optimizer/scheduler state, RNG and data-position
resume, logging and accelerate/DeepSpeed/FSDP integration are what users already know);
mmlora supplies the model setup, the dataset, the collator, atomic checkpoints (trainer.py)
and the guards against lost work (guards.py).
"""

from __future__ import annotations

import json
import logging
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmlora.config.loading import save_recipe
from mmlora.config.schema import Recipe
from mmlora.data.collate import generation_batch
from mmlora.data.grouping import sample_lengths
from mmlora.data.samples import Sample, user_turn
from mmlora.data.scan import prepare_training_data
from mmlora.errors import MmloraError
from mmlora.models.frozen_vision import skip_frozen_vision_graph
from mmlora.models.loading import LoadedModel, load_model_and_processor, set_attn_implementation
from mmlora.models.lora import (
    apply_lora, count_parameters, format_adapted_modules, format_parameter_table, install_param_groups,
    save_adapter,
)
from mmlora.models.model_card import keep_own_readme, write_run_card
from mmlora.training.batches import dataloader_workers, training_collator
from mmlora.training.checkpoints import (
    check_free_disk, check_resume_compatible, estimate_checkpoint_bytes, find_checkpoint,
    prepare_output_dir,
)
from mmlora.training.console import attach_console, progress_bars_wanted
from mmlora.training.guards import GracefulInterrupt, NonFiniteGuard, StopNow
from mmlora.training.fsdp import gathered_trainable_state
from mmlora.training.preflight import check_before_training
from mmlora.training.ranks import is_main_process, world_size
from mmlora.training.vision_features import attach_training_cache, report_training_cache

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    output_dir: Path
    model: Any
    """The trained PeftModel (in memory, on its training device)."""
    loaded: LoadedModel
    log_history: list[dict]
    interrupted_by: int | None = None
    """The signal that stopped the run early (a checkpoint was saved), else None."""
    checkpoint: Path | None = None
    """The newest checkpoint written by this run."""
    skipped_steps: int = 0
    """Updates skipped because of a non-finite loss or gradient."""
    adapter_saved: bool = False
    """Training finished and the final adapter is in output_dir (also when a signal then
    stopped the end-of-training evaluation)."""
    first_step: int = 0
    """The step this call started from: a resumed checkpoint's, else 0."""


def prepare_model(recipe: Recipe, loaded: LoadedModel | None = None):
    """Load the base (unless given), attach LoRA, and print trainable parameters per component."""
    import torch

    torch.manual_seed(recipe.train.seed)
    loaded = loaded or load_model_and_processor(recipe.model, attn_implementation=recipe.train.attn_implementation)
    set_attn_implementation(loaded.model, recipe.train.attn_implementation)  # also for a model passed in
    model = apply_lora(loaded.model, loaded.family, recipe.lora)
    skip_frozen_vision_graph(model, loaded.family)  # a frozen vision tower builds no autograd graph
    if is_main_process():
        print(format_adapted_modules(model.mmlora_adapted))
        print(format_parameter_table(count_parameters(model, loaded.family)))
    return loaded, model


def training_arguments(recipe: Recipe, device: str):
    import torch
    from transformers import TrainingArguments

    from mmlora.training.eval_callback import evaluation_arguments

    t = recipe.train
    bf16 = t.bf16 == "true" or (t.bf16 == "auto" and device == "cuda" and torch.cuda.is_bf16_supported())
    return TrainingArguments(
        output_dir=t.output_dir,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_ratio,
        lr_scheduler_type=t.lr_scheduler,
        max_grad_norm=t.max_grad_norm,
        logging_steps=t.logging_steps,
        seed=t.seed,
        data_seed=t.seed,
        bf16=bf16,
        # transformers 5.x names these activation_checkpointing (gradient_* are deprecated aliases).
        activation_checkpointing=t.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        dataloader_num_workers=dataloader_workers(t.num_workers, device),  # mmlora/training/batches.py
        use_liger_kernel=t.liger,
        # The dataset yields TrainExample objects for mmlora's collator, not model columns.
        remove_unused_columns=False,
        save_strategy="steps" if t.save_steps > 0 else "no",
        save_steps=t.save_steps if t.save_steps > 0 else 500,
        save_total_limit=t.save_total_limit,
        # On a CPU-only run this also makes torchrun/accelerate multi-process runs use gloo DDP.
        use_cpu=device == "cpu",
        # data.streaming: each rank reads the stream and keeps its share of every batch; dispatching
        # would slice pixel_values (one row per patch, not per sample) as if they were samples.
        accelerator_config={"dispatch_batches": False} if recipe.data.streaming else None,
        disable_tqdm=not progress_bars_wanted(),  # bars on a terminal only (mmlora/training/console.py)
        **evaluation_arguments(recipe),  # eval loss interval, report_to (mmlora/training/eval_callback.py)
    )


def save_outputs(out_dir: Path, model, loaded: LoadedModel, recipe: Recipe, history: list[dict],
                 state_dict: dict | None = None) -> None:
    """Adapter (safetensors), processor, resolved recipe and the training log. `state_dict`:
    the adapter weights gathered from FSDP shards (mmlora/training/fsdp.py), else the model's."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # Adapter + adapted_modules.json; PiSSA/OLoRA adapters converted to plain LoRA (mmlora/models/lora.py).
    with keep_own_readme(out_dir):  # PEFT would edit a README.md of the user's
        save_adapter(model, out_dir, state_dict)
    loaded.processor.save_pretrained(out_dir)
    save_recipe(recipe, out_dir / "recipe.yaml")
    write_train_log(out_dir, history)
    write_run_card(out_dir, recipe.model.name)  # mmlora's card instead of PEFT's blank template


def write_train_log(out_dir: Path, history: list[dict]) -> None:
    """train_log.jsonl: the trainer's log history, one JSON object per line."""
    with (out_dir / "train_log.jsonl").open("w") as handle:
        for entry in history:
            handle.write(json.dumps(entry) + "\n")


def dummy_vision_batch(processor) -> dict:
    """A one-image, few-token batch (see MmloraTrainer.compute_loss: ZeRO-3 and text-only batches)."""
    from PIL import Image

    # 56 px: every family's image processor resizes it to its own minimum (Qwen-VL's min_pixels,
    # LLaVA's crop, Idefics3's tile), so one size fits all and the batch stays small.
    sample = Sample([Image.new("RGB", (56, 56))], [user_turn("")], "dummy")
    return generation_batch(processor, [sample])


def _explain_oom(recipe: Recipe) -> MmloraError:
    return MmloraError(
        f"Out of GPU memory with train.batch_size={recipe.train.batch_size}, "
        f"data.max_length={recipe.data.max_length}, model.max_pixels={recipe.model.max_pixels}. "
        "Lower one of them (max_pixels bounds visual tokens per image), raise train.grad_accum "
        "to keep the effective batch, or set train.gradient_checkpointing=true."
    )


def train(recipe: Recipe, loaded: LoadedModel | None = None, resume: str | None = None,
          overwrite: bool = False, callbacks: list = ()) -> TrainResult:
    """Run one fine-tune as the recipe says; returns where it saved and the trained model.

    `resume`: `latest` or a checkpoint directory. `overwrite`: reuse a non-empty output dir.
    `callbacks`: extra `transformers.TrainerCallback`s, run before mmlora's own.
    """
    import torch

    check_before_training(recipe)  # report_to packages, QLoRA: before any data or weights (preflight.py)
    out_dir = Path(recipe.train.output_dir)
    checkpoint = None
    if is_main_process():
        prepare_output_dir(out_dir, resume, overwrite)
    if resume:
        checkpoint = find_checkpoint(out_dir, resume, world_size())
        check_resume_compatible(checkpoint, recipe)
        done = json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
        if 0 < recipe.train.max_steps <= done:
            raise MmloraError(
                f"{checkpoint} already reached train.max_steps={recipe.train.max_steps}: nothing "
                "to resume. Its adapter is in that folder (use it with --adapter); to train on, "
                "resume with a higher train.max_steps."
            )
    # Data pre-scan (mmlora.data.scan): bad rows and over-long samples are found before any
    # weights load or step runs; the counts go to data_report.json in the output directory.
    data = prepare_training_data(recipe, loaded.processor if loaded else None,
                                 out_dir if is_main_process() else None)
    loaded, model = prepare_model(recipe, loaded)
    if recipe.train.gradient_checkpointing:
        # The frozen embeddings give the checkpointed blocks inputs without grad; this hook
        # makes them require grad so gradients reach the LoRA weights inside the blocks.
        model.enable_input_require_grads()
    device = next(model.parameters()).device.type
    if recipe.train.liger and device != "cuda":  # liger-kernel itself: check_before_training (preflight.py)
        raise MmloraError("train.liger=true needs a CUDA GPU and the liger-kernel package "
                          "(`pip install liger-kernel`); set train.liger=false otherwise.")
    args = training_arguments(recipe, device)
    if recipe.train.save_steps > 0 and is_main_process():
        kept = (recipe.train.save_total_limit or 1_000) + 1
        check_free_disk(out_dir, kept * estimate_checkpoint_bytes(model))
    from mmlora.training.trainer import MmloraTrainer

    guard, interrupt = NonFiniteGuard(recipe.train.max_bad_steps), GracefulInterrupt()
    distributed = world_size() > 1
    from mmlora.training.eval_callback import TrainingEvaluation

    # Eval loss, generation metrics, best adapter and loss.png (mmlora/training/eval_callback.py).
    evaluation = TrainingEvaluation(recipe, loaded.processor, *data.eval_parts())
    trainer = MmloraTrainer(
        model=model,
        args=args,
        train_dataset=data.dataset,
        eval_dataset=evaluation.loss_dataset,
        data_collator=training_collator(loaded.processor, recipe, model),  # mmlora/training/batches.py
        callbacks=[*callbacks, *data.callbacks, guard, interrupt],
        recipe=recipe,
        processor=loaded.processor,
        dummy_vision_batch=dummy_vision_batch(loaded.processor) if distributed else None,
    )
    if recipe.data.group_by_length:  # mmlora/data/grouping.py
        trainer.group_lengths = sample_lengths(data.scan, loaded.processor, recipe.data.max_length)
    # Encode each image once when images repeat (mmlora/training/vision_features.py); a stream
    # (data.streaming) has no length and is taken as read once.
    train_samples = len(data.dataset) if hasattr(data.dataset, "__len__") else None
    vision_store = attach_training_cache(trainer, loaded.family, recipe, train_samples, world_size())
    evaluation.attach(trainer)
    attach_console(trainer, recipe)  # readable log lines and summary (mmlora/training/console.py)
    install_param_groups(trainer, loaded.family, recipe.lora)  # LoRA+, per-component learning rates
    interrupt.install()
    try:
        try:
            trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        except torch.OutOfMemoryError:
            raise _explain_oom(recipe) from None
        result = TrainResult(out_dir, model, loaded, trainer.state.log_history, interrupt.signum,
                             trainer.last_checkpoint, guard.skipped, first_step=done if checkpoint else 0)
        if guard.gave_up_at is not None:
            raise MmloraError(
                f"Stopped at step {guard.gave_up_at}: {guard.consecutive} consecutive steps had a "
                f"NaN/inf loss or gradient (their updates were skipped, so the weights are intact). "
                f"Last good checkpoint: {trainer.last_checkpoint or 'none yet'}. Lower "
                "train.learning_rate, check the data, or raise train.max_bad_steps."
            )
        finish_run(trainer, evaluation, interrupt, result, recipe)
    finally:
        interrupt.uninstall()
    report_training_cache(vision_store, trainer.accelerator, world_size())  # a collective: success path only
    if distributed:
        # Each rank leaves the process group before Python exits (accelerate's documented end):
        # with the group still up, gloo's worker threads can hold tensors while the interpreter
        # is torn down, and the rank aborts ("terminate called without an active exception",
        # SIGABRT), after which torchrun stops the others and a finished run fails. Only after
        # success: a rank leaving while another waits in a collective would hang that one.
        trainer.accelerator.end_training()
    return result


def finish_run(trainer, evaluation, interrupt: GracefulInterrupt, result: TrainResult, recipe: Recipe) -> None:
    """Save the final adapter of a run that reached its last step, then evaluate it.

    The adapter is written first, with signals still deferred (a Ctrl-C cannot cut a file in
    half), also when a signal arrived during the last step or its eval loss: the training is
    done and must not be lost. The end-of-training evaluation comes after; a signal during it
    stops it at once (StopNow) and keeps the adapter.
    """
    if trainer.state.global_step < trainer.state.max_steps:
        return  # stopped early by a signal: the checkpoint is what resumes
    if result.first_step:
        # The Trainer's train_loss is the mean over this call's steps only: the log (and the
        # model card, mmlora/models/model_card.py) say from which step, not "the whole run".
        for entry in trainer.state.log_history:
            if "train_loss" in entry and entry.get("step") == trainer.state.global_step:
                entry["train_loss_first_step"] = result.first_step + 1
    # Under FSDP the adapter is sharded: every rank joins its gather, rank 0 writes it.
    state = gathered_trainable_state(trainer.model) if trainer.is_fsdp_enabled else None
    if trainer.args.should_save:
        save_outputs(result.output_dir, result.model, result.loaded, recipe, trainer.state.log_history, state)
        print(f"saved adapter, processor and recipe to {result.output_dir}")
    result.adapter_saved = True
    if not evaluation.wants_final():
        result.interrupted_by = None  # a signal during the last step found nothing left undone
        return
    if interrupt.signum is not None:
        return  # the signal came before the final evaluation: it is skipped (message in the CLI)
    interrupt.stop_at_once()
    try:
        evaluation.finish(result.model)
    except StopNow as stop:
        result.interrupted_by = stop.signum
    finally:
        interrupt.stop_at_once(False)  # writing the log below: a signal waits for it again
    if result.interrupted_by is None and trainer.args.should_save:
        write_train_log(result.output_dir, trainer.state.log_history)  # now with the final_* metrics
        write_run_card(result.output_dir, recipe.model.name)


def shell_command(words: list[str]) -> str:
    import shlex

    return shlex.join(["mmlora", *words])


def interrupted_message(result: TrainResult, recipe_arg: str, overrides: list[str] = ()) -> str:
    """What stopped the run, where its work is, and the command that continues THIS run.

    The command repeats the recipe, every override and the output directory (the resolved
    one), so pasted as printed it resumes this run and no other; shell-quoted."""
    name = signal.Signals(result.interrupted_by).name
    if result.adapter_saved:
        evaluate = shell_command(["eval", recipe_arg, *overrides, "--adapter", str(result.output_dir)])
        return (f"mmlora: stopped by {name} at the end of training, before the evaluation finished; "
                f"training is complete and the adapter is saved in {result.output_dir}. Run only "
                f"the evaluation with: {evaluate}")
    if result.checkpoint is None:
        return f"mmlora: stopped by {name} before the first checkpoint; nothing to resume."
    resume = shell_command(["train", recipe_arg, *overrides, "--output-dir", str(result.output_dir),
                            "--resume", "latest"])
    return f"mmlora: stopped by {name}; checkpoint saved to {result.checkpoint}. Resume with: {resume}"
