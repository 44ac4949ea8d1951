"""`bench/run.py --workload gpu --dry-run`: everything of a GPU workload that runs without a GPU.

Builds the workload's synthetic data (fewer samples) and model folder, the mmlora recipe of the
benchmark, the 2B architecture with LoRA on the meta device, encodes one batch with the real
processor, and computes for that batch what the GPU run reports next to its measurements: the
planner's peak-memory estimate and the model FLOPs of a step (the MFU numerator). Nothing is
trained, so there is no measured column: the table says so.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from bench.workloads import Workload, write_data, write_model_dir


def dry_run(workload: Workload, tmp: Path) -> tuple[str, dict]:
    """(markdown section, {config: summary}) for one GPU workload; summaries carry `est_mib` and
    `model_tflops_per_step` but no measured `peak_mib`, so no planner check comes of them."""
    import torch

    from bench.runners import load_bench_processor, mmlora_recipe
    from mmlora.data.collate import IGNORE_INDEX, encode_for_training
    from mmlora.data.loading import load_samples
    from mmlora.models.memory import estimate_memory, meta_lora_model, training_flops

    small = dataclasses.replace(workload, samples=2 * workload.batch_size)
    data = write_data(tmp / workload.name, small)
    model_name = write_model_dir(tmp / f"{workload.name}-model", workload)
    recipe = mmlora_recipe(workload, data, model_name, tmp / "run", packing=False)
    processor = load_bench_processor(workload, model_name)
    samples = load_samples(str(data), recipe.data, recipe.task)[: workload.batch_size]
    examples = [encode_for_training(processor, s, workload.max_length) for s in samples]
    lengths = [len(e.input_ids) for e in examples]
    visual = sum(e.input_ids.count(processor.image_token_id) for e in examples)
    trained = sum(sum(1 for label in e.labels[1:] if label != IGNORE_INDEX) for e in examples)
    rows, width = len(examples), max(lengths)
    model, family = meta_lora_model(recipe, torch.bfloat16)
    estimate = estimate_memory(recipe, batch_size=rows, seq_len=width, visual_tokens=visual // rows, model=model,
                               dtype=torch.bfloat16, attn_implementation="sdpa", trained_tokens=trained)
    patches = 4 * visual  # 2x2 merge: 4 vision patches per visual token
    flops = training_flops(model, family, sum(lengths), sum(lengths) / rows, patches)
    params = sum(p.numel() for p in model.parameters())
    summary = {"est_mib": estimate.total / 2**20, "model_tflops_per_step": flops / 1e12, "rows": rows,
               "width": width, "tokens": sum(lengths), "visual_tokens": visual, "trained_tokens": trained}
    markdown = "\n".join([
        f"### {workload.name} (dry run: one batch encoded, planner and FLOPs only; nothing trained or measured)",
        "",
        f"Model: {params / 1e9:.2f}B parameters with LoRA (meta device); batch of {rows} samples, "
        f"{sum(lengths)} tokens ({visual} visual, {trained} trained), padded to {rows} x {width}.",
        "",
        "| configuration | model TFLOP/step | est. peak (MiB) | measured peak (MiB) |",
        "|---|---|---|---|",
        f"| mmlora | {flops / 1e12:.2f} | {estimate.total / 2**20:.0f} | not measured (dry run) |",
    ])
    return markdown, {"mmlora": summary}
