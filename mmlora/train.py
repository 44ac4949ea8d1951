"""Fine-tune: recipe -> model + LoRA -> HF Trainer with mmlora's collator -> adapter on disk.

The HF `Trainer` runs the loop (why: its resume, logging, accelerate/DeepSpeed/FSDP integration
are what users already know); mmlora supplies the model setup, the dataset and the collator.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmlora.collate import TrainingCollator, encode_for_training
from mmlora.config import Recipe, save_recipe
from mmlora.data import Sample, load_samples
from mmlora.lora import apply_lora, count_parameters, format_parameter_table
from mmlora.modeling import LoadedModel, load_model_and_processor

log = logging.getLogger(__name__)


class EncodedDataset:
    """Samples encoded on access, so image decoding runs in DataLoader workers."""

    def __init__(self, samples: list[Sample], processor, max_length: int):
        self.samples, self.processor, self.max_length = samples, processor, max_length

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        return encode_for_training(self.processor, self.samples[index], self.max_length)


@dataclass
class TrainResult:
    output_dir: Path
    model: Any
    """The trained PeftModel (in memory, on its training device)."""
    loaded: LoadedModel
    log_history: list[dict]


def prepare_model(recipe: Recipe, loaded: LoadedModel | None = None):
    """Load the base (unless given), attach LoRA, and print trainable parameters per component."""
    import torch

    torch.manual_seed(recipe.train.seed)
    loaded = loaded or load_model_and_processor(recipe.model)
    model = apply_lora(loaded.model, loaded.family, recipe.lora)
    print(format_parameter_table(count_parameters(model, loaded.family)))
    return loaded, model


def training_arguments(recipe: Recipe, device: str):
    import torch
    from transformers import TrainingArguments

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
        logging_steps=t.logging_steps,
        seed=t.seed,
        data_seed=t.seed,
        bf16=bf16,
        # transformers 5.x names these activation_checkpointing (gradient_* are deprecated aliases).
        activation_checkpointing=t.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        dataloader_num_workers=t.num_workers,
        # The dataset yields TrainExample objects for mmlora's collator, not model columns.
        remove_unused_columns=False,
        save_strategy="no",
        report_to="none",
        use_cpu=device == "cpu",
        disable_tqdm=False,
    )


def save_outputs(out_dir: Path, model, loaded: LoadedModel, recipe: Recipe, history: list[dict]) -> None:
    """Adapter (safetensors), processor, resolved recipe and the training log."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # save_embedding_layers=False: embeddings are frozen, and "auto" makes PEFT look the base
    # model up on the hub to compare vocabularies (a warning offline, a network call online).
    model.save_pretrained(out_dir, safe_serialization=True, save_embedding_layers=False)
    loaded.processor.save_pretrained(out_dir)
    save_recipe(recipe, out_dir / "recipe.yaml")
    with (out_dir / "train_log.jsonl").open("w") as handle:
        for entry in history:
            handle.write(json.dumps(entry) + "\n")


def train(recipe: Recipe, loaded: LoadedModel | None = None) -> TrainResult:
    """Run one fine-tune as the recipe says; returns where it saved and the trained model."""
    from transformers import Trainer

    samples = load_samples(recipe.data.train, recipe.data, recipe.task)
    loaded, model = prepare_model(recipe, loaded)
    if recipe.train.gradient_checkpointing:
        # The frozen embeddings give the checkpointed blocks inputs without grad; this hook
        # makes them require grad so gradients reach the LoRA weights inside the blocks.
        model.enable_input_require_grads()
    device = next(model.parameters()).device.type
    dataset = EncodedDataset(samples, loaded.processor, recipe.data.max_length)
    trainer = Trainer(
        model=model,
        args=training_arguments(recipe, device),
        train_dataset=dataset,
        data_collator=TrainingCollator(loaded.processor),
    )
    trainer.train()
    out_dir = Path(recipe.train.output_dir)
    save_outputs(out_dir, model, loaded, recipe, trainer.state.log_history)
    print(f"saved adapter, processor and recipe to {out_dir}")
    return TrainResult(out_dir, model, loaded, trainer.state.log_history)
