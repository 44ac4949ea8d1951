"""`python bench/run.py --workload vision-cache`: what train.vision_cache gains over 3 epochs.

The CPU model is a Qwen2-VL with its widths scaled down and its language MLP width chosen so
that the vision-to-language FLOP ratio per sample equals Qwen2-VL-2B's at 448x448 px, computed
below from the published config (bench/workloads.py QWEN2_VL_2B) with the same formulas for
both models (tests/bench/test_vision_cache_bench.py checks them against torch's FLOP counter).
Each configuration trains 3 epochs over the same data; the first epoch (which fills the cache)
is left out of the throughput, so tokens/s is that of epochs 2-3. With the cache on, the vision
tower runs only in epoch 1: the speed-up cannot exceed 1 / (1 - vision share of a step).

`--device cuda` runs the same comparison on Qwen2-VL-2B's real architecture (bf16, random weights).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from bench.workloads import QWEN2_VL_2B, WORDS

EPOCHS, SAMPLES, BATCH = 3, 48, 8
QUESTION = "What is in the picture?"


def vision_flops(vision: dict, patches: int) -> float:
    """Forward FLOPs of a Qwen2-VL vision tower over one image of `patches` patches: patch
    embedding, `depth` blocks (qkv/proj + MLP matmuls, full attention over the image) and the
    2x2 merger MLP (over patches / 4)."""
    d, depth = vision["embed_dim"], vision["depth"]
    pixels_per_patch = 3 * vision["temporal_patch_size"] * vision["patch_size"] ** 2
    block = 2 * patches * (4 * d * d + 2 * d * vision["mlp_ratio"] * d) + 4 * patches * patches * d
    merged = 4 * d
    merger = 2 * (patches // 4) * (merged * merged + merged * vision["hidden_size"])
    return 2 * patches * pixels_per_patch * d + depth * block + merger


def language_flops(text: dict, tokens: int, answer_tokens: int, lora_r: int, checkpointing: bool) -> float:
    """FLOPs of the language tower's LoRA training step over one sample of `tokens` tokens, as
    mmlora.models.memory.training_flops counts them: frozen weights 2 forward + 2 backward per
    weight and token, LoRA weights 2 + 4, causal attention 2 x tokens x width forward and twice
    that backward, lm_head only on answer tokens; checkpointing adds one more forward."""
    h, inter, layers = text["hidden_size"], text["intermediate_size"], text["num_hidden_layers"]
    kv = h // text["num_attention_heads"] * text["num_key_value_heads"]
    frozen = layers * (2 * h * h + 2 * h * kv + 3 * h * inter)
    lora = layers * lora_r * (2 * (h + h) + 2 * (h + kv) + 2 * (h + inter) + (inter + h))
    attention_forward = 2 * tokens * tokens * h * layers
    head = 4 * answer_tokens * h * text["vocab_size"]
    flops = 4 * tokens * frozen + 6 * tokens * lora + 3 * attention_forward + head
    if checkpointing:
        flops += 2 * tokens * (frozen + lora) + attention_forward
    return flops


def published_ratio(checkpointing: bool) -> tuple[float, float, float]:
    """Qwen2-VL-2B at 448x448: (vision FLOPs, language FLOPs, ratio) per sample: 1024 patches
    (256 visual tokens) and ~300 tokens per sample (256 visual + 44 text, 16 of them answer)."""
    vision = vision_flops(QWEN2_VL_2B["vision_config"], 1024)
    language = language_flops(QWEN2_VL_2B["text_config"], 300, 16, 16, checkpointing)
    return vision, language, vision / language


def scaled_config(tokens: int, answer_tokens: int, width: int = 1024, layers: int = 1, depth: int = 1) -> dict:
    """The CPU model: widths scaled down (language `layers` layers and vision `depth` blocks, both
    `width` wide; 224x224 px = 256 patches); the language MLP width is then chosen (in steps of
    32) so that the ratio without checkpointing at `tokens` tokens per sample matches the
    published one."""
    config = json.loads(json.dumps(QWEN2_VL_2B))
    heads = width // 64
    config["text_config"].update(hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                                 num_key_value_heads=2, vocab_size=512,
                                 rope_parameters={"rope_type": "default", "mrope_section": [8, 12, 12],
                                                  "rope_theta": 1000000.0})
    config["vision_config"].update(embed_dim=width, hidden_size=width, num_heads=heads, depth=depth)
    target, vision = published_ratio(False)[2], vision_flops(config["vision_config"], 256)

    def miss(mlp: int) -> float:
        text = {**config["text_config"], "intermediate_size": mlp}
        return abs(vision / language_flops(text, tokens, answer_tokens, 16, False) - target)

    config["text_config"]["intermediate_size"] = min(range(256, 16384, 32), key=miss)
    return config


def write_inputs(root: Path, config: dict, device: str) -> tuple[Path, str]:
    """Data (SAMPLES rows, one distinct image each) and the model folder (tiny tokenizer)."""
    import random
    import shutil

    from PIL import Image, ImageDraw

    from mmlora.models.tiny import tiny_dir

    side = 224 if device == "cpu" else 448
    rng = random.Random(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(SAMPLES):
        image = Image.new("RGB", (side, side), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
        ImageDraw.Draw(image).ellipse((side // 4, side // 4, 3 * side // 4, 3 * side // 4), fill=(i * 5 % 256, 80, 160))
        image.save(root / "images" / f"{i}.png")
        rows.append({"image": f"images/{i}.png", "question": QUESTION,
                     "answer": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))})
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    model_dir = root / "model"
    model_dir.mkdir(exist_ok=True)
    tiny = json.loads((tiny_dir("tiny/qwen2-vl") / "config.json").read_text())
    for item in tiny_dir("tiny/qwen2-vl").iterdir():
        if item.name != "config.json":
            shutil.copy(item, model_dir / item.name)
    for key in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        config[key] = tiny[key]
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        config["text_config"][key] = tiny["text_config"][key]
    (model_dir / "config.json").write_text(json.dumps(config, indent=2))
    return data, str(model_dir)


def train_once(data: Path, model_dir: str, out: Path, cache: str, checkpointing: bool, device: str) -> dict:
    """One 3-epoch run; tokens/s of epochs 2-3 (bench/measure.py Meter), losses, cache sizes."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    from bench.measure import Meter
    from mmlora.config.loading import recipe_from_dict
    from mmlora.models.families import QWEN2_VL
    from mmlora.models.loading import LoadedModel
    from mmlora.data.scan import load_data_processor
    from mmlora.training.train import train

    side = 224 if device == "cpu" else 448
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    recipe = recipe_from_dict({
        "task": "vqa",
        "model": {"name": model_dir, "dtype": str(dtype).removeprefix("torch."),
                  "min_pixels": side * side, "max_pixels": side * side},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
        "data": {"train": str(data), "max_length": 1024, "group_by_length": False},
        "train": {"output_dir": str(out), "epochs": EPOCHS, "batch_size": BATCH, "learning_rate": 1e-4,
                  "save_steps": 0, "logging_steps": 1, "eval_strategy": "never", "report_to": ["none"], "seed": 0,
                  "gradient_checkpointing": checkpointing, "num_workers": 0, "vision_cache": cache,
                  "vision_cache_dir": str(out.parent / f"features-{out.name}")},
        "eval": {"generate_at_end": False},
    }, source="bench")
    processor = load_data_processor(recipe.model)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(model_dir), dtype=dtype)
    meter = Meter(time.perf_counter(), processor.pad_token_id, processor.image_token_id,
                  warmup=SAMPLES // BATCH, batch_size=BATCH, cuda=device == "cuda")
    result = train(recipe, loaded=LoadedModel(model, processor, QWEN2_VL), overwrite=True, callbacks=[meter])
    m = meter.finish()
    store = getattr(result.model.get_base_model().model, "mmlora_vision_store", None)
    stats = store.stats if store is not None else None
    return {"tokens_per_s": m.real_tokens / m.measured_seconds, "losses": m.losses,
            "tokens": m.real_tokens / max(1, m.samples), "visual": m.visual_tokens / max(1, m.samples),
            "ram_per_image": stats and stats.ram_bytes / max(1, stats.entries),
            "disk_per_image": stats and stats.disk_bytes / max(1, stats.entries)}


def mean_tokens(data: Path, model_dir: str, side: int) -> tuple[float, float]:
    """(tokens, answer tokens) per sample of the data, as mmlora's collator encodes it."""
    from mmlora.config.schema import DataConfig, ModelConfig
    from mmlora.data.collate import encode_for_training
    from mmlora.data.loading import load_samples
    from mmlora.data.scan import load_data_processor

    processor = load_data_processor(ModelConfig(name=model_dir, min_pixels=side * side, max_pixels=side * side))
    examples = [encode_for_training(processor, s, 1024) for s in load_samples(str(data), DataConfig(train=str(data)), "vqa")]
    return (sum(len(e.input_ids) for e in examples) / len(examples),
            sum(sum(1 for label in e.labels if label != -100) for e in examples) / len(examples))


RUNS = [("off", False), ("auto", False), ("off", True), ("auto", True)]


def run_bench(tmp: Path, device: str, rounds: int = 2) -> tuple[str, float]:
    """The four runs, `rounds` times in alternating order (load from other processes hits all
    alike; the table shows medians); returns the Markdown report and the speed-up without
    checkpointing."""
    import statistics

    side = 224 if device == "cpu" else 448
    if device == "cpu":
        data, _ = write_inputs(tmp, scaled_config(110, 8), device)  # data first: its token counts fix the widths
        tokens, answer = mean_tokens(data, str(tmp / "model"), side)
        config = scaled_config(round(tokens), round(answer))
    else:
        config, tokens, answer = json.loads(json.dumps(QWEN2_VL_2B)), 300, 16
    data, model_dir = write_inputs(tmp, config, device)
    runs = {run: [] for run in RUNS}
    for round_ in range(rounds):
        for cache, checkpointing in (RUNS if round_ % 2 == 0 else RUNS[::-1]):
            print(f"[bench] vision-cache round {round_ + 1}/{rounds}: cache {cache}, gradient checkpointing "
                  f"{'on' if checkpointing else 'off'}", flush=True)
            runs[cache, checkpointing].append(train_once(data, model_dir, tmp / f"run-{cache}-{checkpointing}-{round_}",
                                                         cache, checkpointing, device))
    results = {run: {**found[0], "tokens_per_s": statistics.median(r["tokens_per_s"] for r in found),
                     "rounds": [round(r["tokens_per_s"]) for r in found]} for run, found in runs.items()}
    lines = ["Qwen2-VL-2B at 448x448 (published config: vision depth 32, width 1280; language 28 layers, "
             "width 1536, MLP 8960), per sample of 1024 patches and ~300 tokens:"]
    for checkpointing in (False, True):
        v, lang, ratio = published_ratio(checkpointing)
        lines.append(f"- gradient checkpointing {'on' if checkpointing else 'off'}: vision {v / 1e12:.2f} TFLOP, "
                     f"language LoRA step {lang / 1e12:.2f} TFLOP: ratio {ratio:.3f}, vision share "
                     f"{100 * v / (v + lang):.1f}%")
    t, vc = config["text_config"], config["vision_config"]
    lines += ["", f"Bench model: language {t['num_hidden_layers']} layers, width {t['hidden_size']}, MLP "
              f"{t['intermediate_size']}; vision depth {vc['depth']}, width {vc['embed_dim']}; {side}x{side} px "
              f"images ({(side // 14) ** 2} patches); {tokens:.1f} tokens per sample ({answer:.1f} answer tokens), "
              f"{SAMPLES} samples, batch {BATCH}, {EPOCHS} epochs, {device}, median of {rounds} rounds, "
              f"{'fp32' if device == 'cpu' else 'bf16'}.", "",
              "| gradient checkpointing | vision/language FLOPs | vision share | ceiling 1/(1-share) "
              "| tokens/s, cache off | tokens/s, cache on | speed-up | of the ceiling |", "|---" * 8 + "|"]
    speedups = {}
    for checkpointing in (False, True):
        v = vision_flops(vc, (side // 14) ** 2)
        lang = language_flops(t, round(tokens), round(answer), 16, checkpointing)
        share, off, on = v / (v + lang), results["off", checkpointing], results["auto", checkpointing]
        speedups[checkpointing] = on["tokens_per_s"] / off["tokens_per_s"]
        ceiling = 1 / (1 - share)
        lines.append(f"| {'on' if checkpointing else 'off'} | {v / lang:.3f} | {100 * share:.1f}% | {ceiling:.2f}x "
                     f"| {off['tokens_per_s']:.0f} | {on['tokens_per_s']:.0f} | {speedups[checkpointing]:.2f}x "
                     f"| {100 * speedups[checkpointing] / ceiling:.0f}% |")
    cached = results["auto", False]
    same = all(len(r["losses"]) == len(runs["off", c][0]["losses"]) and all(
        math.isclose(a, b, rel_tol=1e-6) for a, b in zip(r["losses"], runs["off", c][0]["losses"]))
        for (cache, c), found in runs.items() for r in found)
    lines += ["", f"Cache size per image: {cached['ram_per_image'] / 1024:.1f} KiB in RAM, "
              f"{cached['disk_per_image'] / 1024:.1f} KiB on disk (one safetensors file).",
              f"Per-step losses of every run equal the uncached run's within 1e-6 relative: {'yes' if same else 'NO'}.",
              "tokens/s of each round: " + "; ".join(
                  f"cache {cache}, checkpointing {'on' if c else 'off'}: {results[cache, c]['rounds']}"
                  for cache, c in RUNS) + ".",
              "", f"vision cache speed-up: {speedups[False]:.2f}x",
              f"vision cache speed-up with gradient checkpointing: {speedups[True]:.2f}x"]
    return "\n".join(lines), speedups[False]
