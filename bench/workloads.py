"""The benchmark's workloads: synthetic data with skewed lengths and the models they run on.

cpu: the built-in tiny Qwen2-VL, fp32. gpu: Qwen2-VL-2B's real architecture (config below,
from the published config.json; random weights, so nothing is downloaded), bf16, with the tiny
model's tokenizer: token ids stay below its 512-word vocabulary, and the config's special
token ids point at the tiny tokenizer's, so the 2B embedding and lm_head keep their real size.
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = ["red", "green", "blue", "yellow", "purple", "white", "black", "gray"]
SHAPES = ["circle", "square", "triangle"]
WORDS = ("a the red green blue yellow purple white black gray circle square triangle shape on background "
         "is and of in small large left right top bottom picture image color").split()


@dataclass(frozen=True)
class Workload:
    name: str
    samples: int
    batch_size: int
    steps: int
    warmup_steps: int
    """Steps left out of the throughput (start-up, allocator warm-up)."""
    small_sizes: tuple
    large_sizes: tuple
    large_share: float
    """Share of samples with a large image (the rest small): skewed visual-token counts."""
    long_share: float
    """Share of samples with a long answer (40-80 words; the rest 1-3 words)."""
    max_pixels: int
    max_length: int
    learning_rate: float = 1e-4
    lora_r: int = 16
    gradient_checkpointing: bool = False
    mmlora_options: dict = field(default_factory=dict)
    """Recipe overrides of mmlora's own runs (e.g. DataLoader workers)."""

    @property
    def on_cpu(self) -> bool:
        """CPU workloads run the tiny model in fp32; the others the 2B architecture on CUDA."""
        return self.name.startswith("cpu")


CPU = Workload(
    "cpu", samples=192, batch_size=8, steps=32, warmup_steps=2,
    small_sizes=((56, 56), (84, 56), (112, 84)), large_sizes=((336, 336), (336, 252), (252, 336)),
    large_share=0.3, long_share=0.3, max_pixels=336 * 336, max_length=1024, gradient_checkpointing=True,
)
GPU_448 = Workload(
    "gpu-448", samples=512, batch_size=8, steps=40, warmup_steps=5,
    small_sizes=((448, 448),), large_sizes=((448, 448),), large_share=0.0, long_share=0.3,
    max_pixels=448 * 448, max_length=2048, gradient_checkpointing=True,
)
GPU_MIXED = Workload(
    "gpu-mixed", samples=512, batch_size=8, steps=40, warmup_steps=5,
    small_sizes=((224, 224), (336, 224), (224, 336)), large_sizes=((672, 448), (448, 672), (560, 560)),
    large_share=0.3, long_share=0.3, max_pixels=448 * 448, max_length=2048, gradient_checkpointing=True,
)
CPU_NO_CHECKPOINTING = dataclasses.replace(CPU, name="cpu-no-checkpointing", gradient_checkpointing=False)
"""Without checkpointing the baseline's frozen vision tower builds no graph either: this isolates
what padding removal alone gains."""
WORKLOADS = {"cpu": [CPU, CPU_NO_CHECKPOINTING], "gpu": [GPU_448, GPU_MIXED]}

QWEN2_VL_2B = {  # Qwen/Qwen2-VL-2B-Instruct config.json (architecture fields)
    "architectures": ["Qwen2VLForConditionalGeneration"],
    "model_type": "qwen2_vl",
    "tie_word_embeddings": True,
    "text_config": {
        "model_type": "qwen2_vl_text", "vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960,
        "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2, "hidden_act": "silu",
        "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
        "rope_parameters": {"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0},
    },
    "vision_config": {
        "model_type": "qwen2_vl", "depth": 32, "embed_dim": 1280, "hidden_size": 1536, "mlp_ratio": 4,
        "num_heads": 16, "in_channels": 3, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
    },
}


def write_model_dir(out_dir: Path, workload: Workload) -> str:
    """The model folder the run loads its processor (and, for cpu, the tiny config) from."""
    import shutil

    from mmlora.models.tiny import tiny_dir

    if workload.on_cpu:
        return "tiny/qwen2-vl"
    out_dir.mkdir(parents=True, exist_ok=True)
    for item in tiny_dir("tiny/qwen2-vl").iterdir():
        if item.name != "config.json":
            shutil.copy(item, out_dir / item.name)
    tiny = json.loads((tiny_dir("tiny/qwen2-vl") / "config.json").read_text())
    config = json.loads(json.dumps(QWEN2_VL_2B))
    for key in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        config[key] = tiny[key]
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        config["text_config"][key] = tiny["text_config"][key]
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    return str(out_dir)


def _image(rng: random.Random, size) -> Image.Image:
    image = Image.new("RGB", size, rng.choice(COLORS))
    pen = ImageDraw.Draw(image)
    w, h = size
    pen.ellipse((w // 4, h // 4, 3 * w // 4, 3 * h // 4), fill=rng.choice(COLORS))
    return image


def write_data(out_dir: Path, workload: Workload, seed: int = 0) -> Path:
    """`samples` VQA rows with skewed image sizes and answer lengths; returns the JSONL path."""
    rng = random.Random(seed)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(workload.samples):
        sizes = workload.large_sizes if rng.random() < workload.large_share else workload.small_sizes
        name = f"images/{i}.png"
        _image(rng, rng.choice(sizes)).save(out_dir / name)
        if rng.random() < workload.long_share:
            answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 80)))
        else:
            answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))
        rows.append({"image": name, "question": "What is in the picture?", "answer": answer})
    path = out_dir / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path
