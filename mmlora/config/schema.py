"""The recipe schema: typed dataclasses, one per recipe section, each field with its help text.

Every field carries its documentation in `metadata["help"]`, so `mmlora recipes fields` and the
docs print it from here. Reading YAML into these classes is mmlora/config/loading.py's job.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal


def _doc(text: str, default: Any = dataclasses.MISSING, default_factory: Any = dataclasses.MISSING):
    """A dataclass field with its documentation attached."""
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class ModelConfig:
    name: str = _doc(
        "Hub id (Qwen/Qwen2-VL-2B-Instruct), local directory, or a built-in offline tiny id "
        "(tiny/qwen2-vl).",
        "tiny/qwen2-vl",
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = _doc(
        "Weights dtype. auto: bfloat16 on GPUs that support it, float32 otherwise (CPU).", "auto"
    )
    min_pixels: int = _doc(
        "Smallest image area in pixels after resizing (Qwen-VL: one visual token per 28x28 px, "
        "Qwen3-VL 32x32; fixed-resolution families ignore it; `mmlora plan` prints the counts).",
        56 * 56,
    )
    max_pixels: int = _doc(
        "Largest image area in pixels after resizing; bounds visual tokens per image "
        "(Qwen2-VL: max_pixels / 784) and so memory. Idefics3/SmolVLM: longest edge "
        "sqrt(max_pixels) in whole tiles.",
        448 * 448,
    )
    revision: str | None = _doc("Hub revision (branch, tag or commit) for hub ids.", None)
    trust_remote_code: bool = _doc("Allow model code from the hub. Off unless you need it.", False)
    quantization: Literal["none", "4bit", "8bit"] = _doc(
        "QLoRA: load the language tower's linear layers in 4-bit (NF4, double quantisation) or "
        "8-bit through bitsandbytes (CUDA only; vision tower, projector and lm_head stay in "
        "model.dtype). none loads everything in model.dtype.",
        "none",
    )


@dataclass
class LoraConfig:
    r: int = _doc("LoRA rank: size of the low-rank update.", 8)
    alpha: float = _doc("LoRA alpha; the update is scaled by alpha / r.", 16.0)
    dropout: float = _doc("Dropout on the LoRA input.", 0.05)
    targets: list[str] | str = _doc(
        "Language-tower layers that get LoRA: all-linear (every linear layer of the language "
        "tower), a list of short names (q_proj, v_proj), or a regex matched against full module "
        "names (e.g. '.*layers\\.(1[2-9]|2\\d)\\..*_proj'). A name or regex that matches no layer is an error.",
        "all-linear",
    )
    projector: Literal["frozen", "lora", "full"] = _doc(
        "Vision-language projector (Qwen2-VL: model.visual.merger): frozen, LoRA on its linear "
        "layers, or fully trained (saved with the adapter).",
        "frozen",
    )
    vision: Literal["frozen", "lora"] = _doc(
        "Vision tower (without the projector): frozen, or LoRA on all its linear layers.", "frozen"
    )
    exclude: list[str] = _doc(
        "Layers that get no LoRA although targets/vision select them: short names (down_proj) or "
        "regexes matched against full module names.",
        default_factory=list,
    )
    bias: Literal["none", "all", "lora_only"] = _doc(
        "Also train biases: none, all (every bias of the model), lora_only (biases of adapted layers).",
        "none",
    )
    use_rslora: bool = _doc("rsLoRA: scale the update by alpha / sqrt(r) instead of alpha / r.", False)
    use_dora: bool = _doc("DoRA: learn each adapted weight's magnitude apart from its direction.", False)
    init: Literal["default", "gaussian", "pissa", "olora"] = _doc(
        "LoRA init: default (B=0, A Kaiming), gaussian (B=0, A Gaussian), pissa (principal "
        "singular vectors of W), olora (QR of W). pissa/olora adapters are saved converted to "
        "plain LoRA (rank 2r) that applies to the unchanged base model.",
        "default",
    )
    loraplus_lr_ratio: float | None = _doc(
        "LoRA+: learning rate of the B matrices = train.learning_rate x this ratio (paper: 16).", None
    )
    projector_lr: float | None = _doc(
        "Learning rate of the projector's trained parameters (None: train.learning_rate).", None
    )
    vision_lr: float | None = _doc(
        "Learning rate of the vision tower's LoRA parameters (None: train.learning_rate).", None
    )


@dataclass
class DataConfig:
    train: str | list[str | dict] | dict = _doc(
        "Training data: a .jsonl/.json/.csv/.tsv/.parquet file, a `datasets` save_to_disk folder, "
        "an imagefolder (with metadata.jsonl/.csv/.parquet) or a folder of Parquet files; a hub "
        "dataset hf:ORG/NAME[:CONFIG][@SPLIT] (or a mapping {path, name, split}); or a list of "
        "these, each a path or a mapping {path, weight, min_pixels, max_pixels, format, column_map} "
        "(a mixture: docs/data.md). Row formats: docs/data.md.",
        "",
    )
    eval: str | list[str | dict] | dict | None = _doc(
        "Held-out data (same kinds as data.train; a list is read whole, in order, each source at its "
        "own min/max_pixels) for evaluation and the demo.", None)
    image_root: str | None = _doc(
        "Directory that relative image paths resolve against (default: the data file's directory).",
        None,
    )
    format: Literal["auto", "messages", "sharegpt", "caption", "vqa"] = _doc(
        "Row format: auto detects it per row from the fields (messages, conversations, question, "
        "caption/captions).",
        "auto",
    )
    column_map: list[str] = _doc(
        "Rename dataset columns onto mmlora's names, as source=target entries, e.g. "
        "[img_path=image, query=question, label=answer].",
        default_factory=list,
    )
    system_prompt: str | None = _doc(
        "System message added to samples that have none; None uses the chat template's default.", None
    )
    caption_prompt: str = _doc(
        "User prompt for captioning rows that carry no question.", "Describe the image."
    )
    question_template: str = _doc(
        "User prompt of flat VQA rows; {question} is replaced by the row's question, e.g. "
        "'{question} Answer with one word.'",
        "{question}",
    )
    captions_per_image: Literal["all", "random"] = _doc(
        "Caption rows with several captions: all = one training sample per caption; random = one "
        "sample per image whose caption is drawn anew each epoch.",
        "all",
    )
    train_on: Literal["all_turns", "last_turn"] = _doc(
        "Which assistant turns of a conversation carry the loss (each with its end-of-turn token).",
        "all_turns",
    )
    on_error: Literal["raise", "skip"] = _doc(
        "Bad rows (unreadable image, missing answer, malformed line, ...): raise stops before "
        "training naming file, row and reason; skip drops them and reports counts by reason "
        "(also in data_report.json in the output directory).",
        "raise",
    )
    max_length: int = _doc(
        "Longest tokenised sample (text + visual tokens). Longer samples are dropped or truncated "
        "as data.too_long says; an image is never cut.",
        2048,
    )
    too_long: Literal["drop", "truncate"] = _doc(
        "Samples over data.max_length: drop them (counted), or cut their text after the last "
        "image (dropped when even that does not fit or no answer token would remain).",
        "drop",
    )
    image_check: Literal["decode", "header"] = _doc(
        "Pre-scan depth: decode every image once before training (finds truncated files), or read "
        "headers only (faster on huge datasets; a corrupt image then stops training when reached).",
        "decode",
    )
    num_proc: int = _doc(
        "Processes for the data pre-scan; 0 = auto (one per core, one for small data).", 0
    )
    scan_cache: bool = _doc(
        "Reuse the pre-scan of unchanged data (same files, data fields and processor); stored "
        "under $MMLORA_SCAN_CACHE or ~/.cache/mmlora/scan (docs/data.md).", True
    )
    allow_outside_root: bool = _doc(
        "Allow image paths outside the image root (absolute paths elsewhere, ../).", False
    )
    allow_urls: bool = _doc(
        "Fetch http(s) image URLs (cached in ~/.cache/mmlora/images); refused otherwise.", False
    )
    # Throughput (mmlora/data/packing.py, mmlora/data/grouping.py; docs/performance.md).
    packing: bool = _doc(
        "Pack several samples into one row (each with its own positions; attention never crosses "
        "samples; same loss as unpacked): removes padding. Not for Gemma 3 / PaliGemma.", False
    )
    group_by_length: bool = _doc(
        "Form batches of samples of similar length (text + visual tokens, from the pre-scan), "
        "batches shuffled; every sample once per epoch. Cuts padding without packing.", False
    )
    streaming: bool = _doc(
        "Read data.train as it comes instead of pre-scanning it (sets too big to scan first): each "
        "row is checked when training reaches it, bad or over-long rows are skipped and counted in "
        "the log. Needs train.max_steps; docs/data.md says what is and is not checked then.", False
    )


@dataclass
class TrainConfig:
    output_dir: str = _doc("Where the adapter, processor, resolved recipe and logs go.", "runs/mmlora")
    epochs: float = _doc("Passes over the training data (ignored when max_steps > 0).", 1.0)
    max_steps: int = _doc("Stop after this many optimizer steps; -1 runs `epochs` epochs.", -1)
    batch_size: int = _doc("Samples per device per step.", 1)
    grad_accum: int = _doc("Gradient accumulation steps.", 1)
    learning_rate: float = _doc("Peak learning rate.", 1e-4)
    weight_decay: float = _doc("AdamW weight decay.", 0.0)
    warmup_ratio: float = _doc("Share of steps spent warming the learning rate up.", 0.03)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = _doc(
        "Learning-rate schedule.", "cosine"
    )
    seed: int = _doc("Seed for model init (tiny models), LoRA init and data order.", 42)
    logging_steps: int = _doc("Log the loss every N steps.", 10)
    gradient_checkpointing: bool = _doc(
        "Recompute activations in the backward pass: less memory, ~30% slower.", False
    )
    bf16: Literal["auto", "true", "false"] = _doc(
        "Mixed precision: auto uses bf16 on GPUs that support it.", "auto"
    )
    num_workers: int = _doc(
        "DataLoader worker processes that decode and process images while the model trains. "
        "-1 (auto): 4 on a GPU (at most the CPU count - 1), 0 on CPU, where workers would only "
        "take cores from the compute.", -1
    )
    save_steps: int = _doc(
        "Write a resumable checkpoint every N optimizer steps (0: only at the end).", 500
    )
    save_total_limit: int | None = _doc(
        "Keep only the newest N checkpoints (and the best one, when evaluation picks one); "
        "None keeps all.", 2
    )
    max_grad_norm: float = _doc("Clip the gradient norm to this value (0 disables clipping).", 1.0)
    max_bad_steps: int = _doc(
        "Stop after this many consecutive steps with a NaN/inf loss or gradient (each such "
        "update is skipped and counted).", 10
    )
    # Evaluation during training (mmlora/training/eval_callback.py).
    eval_strategy: Literal["never", "steps", "epoch"] = _doc(
        "When to compute the loss on data.eval during training: every train.eval_steps steps, "
        "at the end of every epoch, or never (also never when data.eval is unset).", "epoch"
    )
    eval_steps: int = _doc("Eval-loss interval in optimizer steps, for eval_strategy=steps.", 100)
    report_to: list[str] = _doc(
        "Where training metrics are logged besides train_log.jsonl: auto (TensorBoard when "
        "installed, else nowhere), none, or Trainer integrations such as tensorboard, wandb.",
        default_factory=lambda: ["auto"],
    )
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = _doc(
        "Attention kernel: auto picks flash_attention_2 when flash-attn is installed and the GPU "
        "supports it (Ampere or newer, bf16/fp16 weights), else sdpa.", "auto"
    )
    liger: bool = _doc(
        "Use Liger kernels (fused RMSNorm, SwiGLU, RoPE, linear + cross-entropy) where the family "
        "has them; needs `pip install liger-kernel` and a CUDA GPU.", False
    )
    # Vision-feature cache (mmlora/models/vision_cache.py, mmlora/training/vision_features.py).
    vision_cache: Literal["auto", "off"] = _doc(
        "Encode each image once: auto caches the frozen vision tower's and projector's features "
        "when images are seen more than once (epochs > 1, or repeated evaluation) and the family "
        "allows it; off computes them at every step.", "auto"
    )
    vision_cache_dir: str | None = _doc(
        "Where cached features go on disk (one safetensors file per image, in a folder per "
        "model/dtype/weights); None: ~/.cache/mmlora/vision-features ($XDG_CACHE_HOME).", None
    )
    vision_cache_memory: int | str = _doc(
        "RAM kept for cached features (e.g. 4GiB, 512MiB, 0); entries beyond it are read from disk.", "4GiB"
    )


@dataclass
class EvalConfig:
    max_new_tokens: int = _doc("Longest generated answer.", 32)
    batch_size: int = _doc("Samples per generation batch (left padded).", 8)
    limit: int | None = _doc("Evaluate at most this many samples (None: all).", None)
    num_beams: int = _doc("Beam search width; 1 is greedy (the default) or sampling.", 1)
    do_sample: bool = _doc("Sample instead of greedy decoding (seeded by train.seed).", False)
    temperature: float = _doc("Sampling temperature (only with do_sample).", 1.0)
    top_p: float = _doc("Nucleus sampling mass (only with do_sample).", 1.0)
    repetition_penalty: float = _doc("Penalty on repeated tokens; 1.0 is none.", 1.0)
    generate_at_end: bool = _doc(
        "At the end of training, generate on data.eval (at most eval.limit samples) and write the "
        "task's metrics to eval_metrics.json and eval_predictions.jsonl in the output directory.",
        True,
    )
    generate_steps: int = _doc(
        "During training, every N optimizer steps, generate on the first eval.generate_subset "
        "samples of data.eval and log the task's metrics (0: only at the end).", 0
    )
    generate_subset: int = _doc("Samples of data.eval used by eval.generate_steps.", 64)
    best_metric: str | None = _doc(
        "Keep the adapter that scores best on this metric in <output_dir>/best: loss (eval loss, "
        "at train.eval_strategy) or a task metric measured every eval.generate_steps (vqa: "
        "vqa_accuracy, exact_match, anls; caption: bleu_1..bleu_4, rouge_l, cider_d). "
        "None: keep only the final adapter.", None
    )
    vqa_normalization: Literal["always", "official"] = _doc(
        "VQA accuracy's answer normalisation: always (prediction and every answer) or official "
        "(as vqaEval.py: only when the annotators' answers disagree). Reports name the rule.", "always"
    )
    report_examples: int = _doc(
        "report.md lists up to this many samples where base and fine-tuned answers differ.", 20
    )
    report_max_cards: int = _doc(
        "report.html shows one card per sample for at most this many samples.", 500
    )


@dataclass
class Recipe:
    task: Literal["caption", "vqa"] = _doc("caption or vqa: picks the prompt and the metric.", "vqa")
    model: ModelConfig = _doc("The base model and its image resolution bounds.", default_factory=ModelConfig)
    lora: LoraConfig = _doc("What is trained, and how.", default_factory=LoraConfig)
    data: DataConfig = _doc("Where the data is and how it becomes chat samples.", default_factory=DataConfig)
    train: TrainConfig = _doc("The optimisation loop.", default_factory=TrainConfig)
    eval: EvalConfig = _doc("Generation settings for evaluation and the demo.", default_factory=EvalConfig)

    def to_dict(self) -> dict:
        """The recipe as plain data (what `save_recipe` writes)."""
        return dataclasses.asdict(self)


def field_docs(cls: type = Recipe, prefix: str = "") -> list[tuple[str, str, Any]]:
    """(dotted name, help, default) for every leaf field: the recipe reference."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            rows.extend(field_docs(hints[f.name], name + "."))
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append((name, f.metadata.get("help", ""), default))
    return rows
