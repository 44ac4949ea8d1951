"""The two ways to fine-tune that the benchmark compares, on the same model, data and LoRA shape.

baseline: what a user writes from the transformers / PEFT / TRL docs for VLM fine-tuning: a
  plain `Trainer`, PEFT LoRA on the language tower's linear layers, and a collator that applies
  the chat template to the whole conversation, processes text and images of the batch with
  padding, and sets labels = input_ids with padding and image tokens at -100 (so the loss covers
  prompt and answer). Images are decoded in the collator, in the main process (the docs'
  `dataloader_num_workers` default, 0). Gradient checkpointing, where the workload uses it, is
  the Trainer's (`gradient_checkpointing=True`, non-reentrant), which keeps the vision tower's
  graph through `enable_input_require_grads`.
mmlora: `mmlora.training.train.train` with a recipe: answer-only labels, length grouping or packing,
  frozen vision tower without a graph, images decoded in DataLoader workers.

Image processing for both is mmlora's `ImageTextProcessor`: transformers cannot build
Qwen2VLProcessor without torchvision, and it makes the same inputs where it can.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.workloads import Workload


def build_model(workload: Workload, model_name: str, device: str):
    """The workload's model with its seeded random weights (cpu: the tiny model; gpu: 2B, bf16)."""
    import torch

    if workload.on_cpu:
        from mmlora.models.tiny import build_tiny_model

        return build_tiny_model(model_name)
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(model_name)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    return model


def load_bench_processor(workload: Workload, model_name: str):
    from mmlora.config.schema import ModelConfig
    from mmlora.data.scan import load_data_processor

    return load_data_processor(ModelConfig(name=model_name, min_pixels=56 * 56, max_pixels=workload.max_pixels))


def run_baseline(workload: Workload, data_path: Path, model_name: str, out_dir: Path, meter) -> None:
    from peft import LoraConfig, get_peft_model
    from PIL import Image
    from transformers import Trainer, TrainingArguments

    from mmlora.data.collate import IGNORE_INDEX, pad_batch
    from mmlora.models.processor import stack_vision

    device = "cpu" if workload.on_cpu else "cuda"
    processor = load_bench_processor(workload, model_name)
    model = build_model(workload, model_name, device)
    lora = LoraConfig(r=workload.lora_r, lora_alpha=2 * workload.lora_r, lora_dropout=0.05,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(model, lora)
    root = data_path.parent
    rows = [json.loads(line) for line in data_path.read_text().splitlines()]
    dataset = [{"image": str(root / r["image"]), "messages": [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": r["question"]}]},
        {"role": "assistant", "content": [{"type": "text", "text": r["answer"]}]}]} for r in rows]

    def collate(examples):
        texts = [processor.render(ex["messages"]) for ex in examples]  # apply_chat_template(tokenize=False)
        images = [[Image.open(ex["image"]).convert("RGB")] for ex in examples]
        # processor(text=texts, images=images, padding=True, return_tensors="pt"), sample by sample
        encoded = [processor.encode(text, imgs) for text, imgs in zip(texts, images)]
        input_ids = pad_batch([e.input_ids for e in encoded], processor.pad_token_id, "right")
        attention_mask = pad_batch([[1] * len(e.input_ids) for e in encoded], 0, "right")
        labels = input_ids.clone()
        labels[attention_mask == 0] = IGNORE_INDEX
        labels[input_ids == processor.image_token_id] = IGNORE_INDEX
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
                **processor.text_inputs(input_ids, attention_mask), **stack_vision([e.vision_inputs for e in encoded])}

    args = TrainingArguments(
        output_dir=str(out_dir), per_device_train_batch_size=workload.batch_size, max_steps=workload.steps,
        learning_rate=workload.learning_rate, logging_steps=1, save_strategy="no", report_to="none",
        remove_unused_columns=False, bf16=device == "cuda", use_cpu=device == "cpu", seed=0,
        gradient_checkpointing=workload.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False}, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collate, callbacks=[meter])
    trainer.train()


def mmlora_recipe(workload: Workload, data_path: Path, model_name: str, out_dir: Path, packing: bool):
    from mmlora.config.loading import recipe_from_dict

    overrides = [f"{key}={value}" for key, value in workload.mmlora_options.items()]
    return recipe_from_dict({
        "task": "vqa",
        "model": {"name": model_name, "dtype": "float32" if workload.on_cpu else "bfloat16",
                  "min_pixels": 56 * 56, "max_pixels": workload.max_pixels},
        "lora": {"r": workload.lora_r, "alpha": 2 * workload.lora_r, "dropout": 0.05},
        "data": {"train": str(data_path), "max_length": workload.max_length,
                 "packing": packing, "group_by_length": not packing},
        "train": {"output_dir": str(out_dir), "max_steps": workload.steps, "batch_size": workload.batch_size,
                  "learning_rate": workload.learning_rate, "save_steps": 0, "logging_steps": 1,
                  "eval_strategy": "never", "report_to": ["none"], "seed": 0,
                  "gradient_checkpointing": workload.gradient_checkpointing},
        "eval": {"generate_at_end": False},
    }, overrides, source="bench")


def run_mmlora(workload: Workload, data_path: Path, model_name: str, out_dir: Path, meter, packing: bool):
    from mmlora.models.loading import LoadedModel, set_attn_implementation
    from mmlora.training.train import train

    recipe = mmlora_recipe(workload, data_path, model_name, out_dir, packing)
    loaded = None
    if not workload.on_cpu:  # the 2B architecture with random weights: built, not loaded
        from mmlora.models.families import QWEN2_VL

        model = build_model(workload, model_name, "cuda")
        set_attn_implementation(model, recipe.train.attn_implementation)
        loaded = LoadedModel(model, load_bench_processor(workload, model_name), QWEN2_VL)
    result = train(recipe, loaded=loaded, overwrite=True, callbacks=[meter])
    return recipe, result.model.config._attn_implementation
