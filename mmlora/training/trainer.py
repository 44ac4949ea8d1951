"""mmlora's Trainer: the HF Trainer with atomic checkpoints and ZeRO-3-safe text-only batches."""

from __future__ import annotations

from pathlib import Path

from transformers import Trainer

from mmlora.training.checkpoints import STAGING, clear_staging, finalize_checkpoint, rotate
from mmlora.training.fsdp import gathered_trainable_state, shard_cpu_processes


def restart_schedule_at_new_length(optimizer, scheduler) -> None:
    """Set the optimizer's learning rates to the current schedule at the step reached.

    The scheduler is built for this run's length; loading the checkpoint restores its step
    count but the optimizer keeps the learning rate the *old* length gave for the next step.
    When a resumed run changes train.max_steps/epochs, the first step would use that stale
    rate (0 at the end of a finished linear/cosine schedule). For an unchanged length the
    value computed here is the one the optimizer already holds (same formula, same inputs).
    """
    from torch.optim.lr_scheduler import LambdaLR

    if not isinstance(scheduler, LambdaLR):  # DeepSpeed or custom schedulers: left as loaded
        return
    rates = [base * schedule(scheduler.last_epoch) for base, schedule in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, rate in zip(optimizer.param_groups, rates):
        group["lr"] = rate
    scheduler._last_lr = rates


class MmloraTrainer(Trainer):
    """HF Trainer whose checkpoints are staged, completed with recipe + processor, then renamed."""

    def __init__(self, *args, recipe, processor, dummy_vision_batch=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.recipe = recipe
        self.mm_processor = processor
        self.dummy_vision_batch = dummy_vision_batch
        self._staging = False
        self.last_checkpoint: Path | None = None

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        # An FSDP launch on CPU processes: accelerate built DDP; switch to FSDP2 here, before
        # train() prepares the model (mmlora/training/fsdp.py says why).
        if shard_cpu_processes(self.accelerator):
            self.is_fsdp_enabled = True

    group_lengths: list[int] | None = None
    """Per-sample token counts when data.group_by_length is on (set by train.py), else None."""

    def _get_train_sampler(self, train_dataset=None):
        # data.group_by_length: batches of similar length, shuffled per epoch (mmlora/data/grouping.py).
        if self.group_lengths is None:
            return super()._get_train_sampler(train_dataset)
        from mmlora.data.grouping import LengthGroupedSampler

        return LengthGroupedSampler(self.group_lengths, self.args.per_device_train_batch_size,
                                    self.args.world_size, self.args.data_seed or self.args.seed)

    def _init_training_state(self, max_steps, *args, **kwargs):
        result = super()._init_training_state(max_steps, *args, **kwargs)
        # On resume the Trainer restores the logging/eval/save intervals of trainer_state.json;
        # the recipe may change them (checkpoints.RESUME_MAY_DIFFER), so the recipe's count.
        self.state.compute_steps(self.args, max_steps)
        return result

    def _load_optimizer_and_scheduler(self, checkpoint) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            restart_schedule_at_new_length(self.optimizer, self.lr_scheduler)

    def _get_output_dir(self, trial) -> str:
        root = super()._get_output_dir(trial)
        return str(Path(root) / STAGING) if self._staging else root

    def _save_checkpoint(self, model, trial) -> None:
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = False
        # Every rank must be done writing (DeepSpeed writes per-rank optimizer shards) before the
        # main process renames the folder into place.
        self.accelerator.wait_for_everyone()
        if not self.args.should_save:
            return  # only the main process renames and rotates
        output_dir = Path(self._get_output_dir(trial))
        staged = output_dir / STAGING / f"checkpoint-{self.state.global_step}"
        final = finalize_checkpoint(staged, output_dir, self.recipe, self.mm_processor, self.state.global_step)
        best = self.state.best_model_checkpoint
        if best and STAGING in Path(best).parts:
            self.state.best_model_checkpoint = str(output_dir / Path(best).name)
        rotate(output_dir, self.args.save_total_limit, keep=self.state.best_model_checkpoint)
        clear_staging(output_dir)
        self.last_checkpoint = final

    def save_model(self, output_dir=None, _internal_call=False) -> None:
        if not self.is_fsdp_enabled:
            return super().save_model(output_dir, _internal_call)
        # FSDP: every rank joins the gather of the adapter; rank 0 writes it (mmlora/training/fsdp.py).
        state = gathered_trainable_state(self.model)
        if self.args.should_save:
            self._save(output_dir, state_dict=state)

    def _save(self, output_dir=None, state_dict=None) -> None:
        # save_embedding_layers=False: embeddings are frozen, and PEFT's "auto" looks the base
        # model up on the hub to compare vocabularies (a network call, a warning offline).
        output_dir = output_dir or self.args.output_dir
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        model.save_pretrained(
            output_dir, state_dict=state_dict, safe_serialization=True,
            save_embedding_layers=False, is_main_process=self.args.should_save,
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.dummy_vision_batch is not None and "pixel_values" not in inputs:
            # Under ZeRO-3 every rank must run the vision tower each step (its sharded weights
            # are gathered collectively): a rank whose batch is text-only would hang the others.
            # A one-image dummy forward, multiplied by zero, keeps the collectives in step
            # without changing the loss or the gradients.
            dummy = {k: v.to(self.args.device) for k, v in self.dummy_vision_batch.items()}
            extra = model(**dummy).logits.sum() * 0.0
            if return_outputs:
                return result[0] + extra, result[1]
            return result + extra
        return result
