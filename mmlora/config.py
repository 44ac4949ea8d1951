"""Recipes: YAML files mapped onto typed dataclasses, with dotted `key=value` overrides.

Every field carries its documentation in `metadata["help"]` so `mmlora recipes show` and the
README can print it, and every value is checked against the field's type (and allowed values)
when the recipe is loaded, long before any weights are.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mmlora.errors import MmloraError


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
    train: str = _doc(
        "Training data: a .jsonl/.json/.csv/.tsv/.parquet file, a `datasets` save_to_disk folder, "
        "an imagefolder (with metadata.jsonl/.csv/.parquet) or a folder of Parquet files. Row "
        "formats: README \"Data\".",
        "",
    )
    eval: str | None = _doc("Held-out data (same kinds as data.train) for evaluation and the demo.", None)
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
    allow_outside_root: bool = _doc(
        "Allow image paths outside the image root (absolute paths elsewhere, ../).", False
    )
    allow_urls: bool = _doc(
        "Fetch http(s) image URLs (cached in ~/.cache/mmlora/images); refused otherwise.", False
    )
    # Throughput (mmlora/packing.py, mmlora/grouping.py; README "Performance").
    packing: bool = _doc(
        "Pack several samples into one row (each with its own positions; attention never crosses "
        "samples; same loss as unpacked): removes padding. Not for Gemma 3 / PaliGemma.", False
    )
    group_by_length: bool = _doc(
        "Form batches of samples of similar length (text + visual tokens, from the pre-scan), "
        "batches shuffled; every sample once per epoch. Cuts padding without packing.", False
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
    # Evaluation during training (mmlora/train_eval.py).
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


# ---------------------------------------------------------------------------------------------
# Building dataclasses from untyped YAML, with errors that name the field.


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`; return it (ints widen to floats)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        # YAML reads `true` as a bool; fields like train.bf16 spell their choices as strings.
        candidate = str(value).lower() if isinstance(value, bool) else value
        if candidate in allowed:
            return candidate
    elif origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, where)
            except MmloraError:
                continue
    elif origin is list:
        item_type = typing.get_args(tp)[0]
        if isinstance(value, str) and item_type is str:
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            return [_coerce(item, item_type, f"{where}[{i}]") for i, item in enumerate(value)]
    elif tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # PyYAML follows YAML 1.1, which reads `2e-4` (no dot) as a string: accept what Python
        # reads as a finite number, so `learning_rate: 2e-4` means what the user wrote.
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise MmloraError(f"{where}: got {value!r}, expected {_describe(tp)}.")


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise MmloraError(f"{where or 'recipe'}: expected a mapping of keys, got {data!r}.")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            from mmlora.overrides import unknown_key_hint  # full dotted keys, across sections

            raise MmloraError(f"Unknown recipe key '{path}'.{unknown_key_hint(path)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value or {}, path)
        else:
            kwargs[key] = _coerce(value, tp, path)
    return cls(**kwargs)


coerce_field, build_section = _coerce, _build  # public names for mmlora.overrides


def _validate(recipe: Recipe) -> None:
    """Checks across fields, and ranges the types cannot express."""
    positive = {
        "model.min_pixels": recipe.model.min_pixels,
        "model.max_pixels": recipe.model.max_pixels,
        "lora.r": recipe.lora.r,
        "data.max_length": recipe.data.max_length,
        "train.batch_size": recipe.train.batch_size,
        "train.grad_accum": recipe.train.grad_accum,
        "train.logging_steps": recipe.train.logging_steps,
        "eval.batch_size": recipe.eval.batch_size,
        "eval.max_new_tokens": recipe.eval.max_new_tokens,
        "train.max_bad_steps": recipe.train.max_bad_steps,
    }
    for name, value in positive.items():
        if value <= 0:
            raise MmloraError(f"{name}: got {value}, expected a positive number.")
    if recipe.model.min_pixels > recipe.model.max_pixels:
        raise MmloraError(
            f"model.min_pixels ({recipe.model.min_pixels}) is larger than model.max_pixels "
            f"({recipe.model.max_pixels})."
        )
    if not 0.0 <= recipe.lora.dropout < 1.0:
        raise MmloraError(f"lora.dropout: got {recipe.lora.dropout}, expected 0 <= dropout < 1.")
    if not 0.0 <= recipe.train.warmup_ratio < 1.0:
        raise MmloraError(f"train.warmup_ratio: got {recipe.train.warmup_ratio}, expected 0 <= ratio < 1.")
    if recipe.train.learning_rate <= 0:
        raise MmloraError(f"train.learning_rate: got {recipe.train.learning_rate}, expected > 0.")
    if recipe.train.num_workers < -1:
        raise MmloraError(f"train.num_workers: got {recipe.train.num_workers}, expected -1 (auto) or 0 or more.")
    if recipe.train.max_steps <= 0 and recipe.train.epochs <= 0:
        raise MmloraError("train.epochs must be > 0 when train.max_steps is -1.")
    if not recipe.lora.targets:
        raise MmloraError("lora.targets is empty: name at least one linear layer (e.g. q_proj).")
    _validate_lora(recipe)
    if not recipe.data.train:
        raise MmloraError("data.train is empty: give the training data file.")
    if "{question}" not in recipe.data.question_template:
        raise MmloraError("data.question_template must contain {question} (where the question goes).")
    from mmlora.formats import parse_column_map

    parse_column_map(recipe.data.column_map)
    _validate_eval(recipe)


def _validate_lora(recipe: Recipe) -> None:
    """LoRA knobs that only make sense together (mmlora/lora.py applies them)."""
    import re

    lora = recipe.lora
    for name, value in {"lora.loraplus_lr_ratio": lora.loraplus_lr_ratio, "lora.projector_lr": lora.projector_lr,
                        "lora.vision_lr": lora.vision_lr}.items():
        if value is not None and value <= 0:
            raise MmloraError(f"{name}: got {value}, expected a positive number.")
    if lora.projector_lr is not None and lora.projector == "frozen":
        raise MmloraError("lora.projector_lr is set but lora.projector=frozen: nothing there is trained.")
    if lora.vision_lr is not None and lora.vision == "frozen":
        raise MmloraError("lora.vision_lr is set but lora.vision=frozen: nothing there is trained.")
    if lora.init in ("pissa", "olora") and lora.use_dora:
        raise MmloraError(f"lora.init={lora.init} cannot be combined with lora.use_dora: the trained "
                          "adapter could not be converted to one that applies to the original base model.")
    if lora.init in ("pissa", "olora") and recipe.model.quantization != "none":
        raise MmloraError(f"lora.init={lora.init} needs the unquantized base weights (it decomposes "
                          "them); use model.quantization=none or lora.init=default.")
    from mmlora.lora import target_spec

    spec = target_spec(lora.targets)
    for pattern in ([spec] if isinstance(spec, str) else []) + lora.exclude:
        try:
            re.compile(pattern)
        except re.error as err:
            raise MmloraError(f"lora: {pattern!r} is not a valid regex ({err}).") from None


def _validate_eval(recipe: Recipe) -> None:
    """Generation settings, evaluation intervals and eval.best_metric (mmlora/train_eval.py)."""
    from mmlora.metrics.task import TASK_METRICS

    e, t = recipe.eval, recipe.train
    for name, value in {"eval.num_beams": e.num_beams, "eval.generate_subset": e.generate_subset,
                        "train.eval_steps": t.eval_steps}.items():
        if value <= 0:
            raise MmloraError(f"{name}: got {value}, expected a positive number.")
    for name, value in {"eval.generate_steps": e.generate_steps, "eval.report_examples": e.report_examples,
                        "eval.report_max_cards": e.report_max_cards}.items():
        if value < 0:
            raise MmloraError(f"{name}: got {value}, expected 0 or more.")
    if e.temperature <= 0 or not 0 < e.top_p <= 1 or e.repetition_penalty <= 0:
        raise MmloraError("eval.temperature and eval.repetition_penalty must be > 0, eval.top_p in (0, 1].")
    if e.best_metric is None:
        return
    name = e.best_metric.removeprefix("eval_")
    allowed = ("loss", *TASK_METRICS[recipe.task])
    if name not in allowed:
        raise MmloraError(f"eval.best_metric: got {e.best_metric!r}, expected one of {', '.join(allowed)} "
                          f"for task {recipe.task}.")
    if not recipe.data.eval:
        raise MmloraError("eval.best_metric needs data.eval: the held-out data it is measured on.")
    if name == "loss" and t.eval_strategy == "never":
        raise MmloraError("eval.best_metric=loss needs train.eval_strategy steps or epoch.")
    if name != "loss" and e.generate_steps == 0:
        raise MmloraError(f"eval.best_metric={name} is measured by generation during training: set "
                          "eval.generate_steps (e.g. 100) so there is more than the final model to compare.")


def apply_override(data: dict, assignment: str) -> None:
    """Apply one `section.key=value` override to raw recipe data (value parsed as YAML)."""
    from mmlora.overrides import parse_value

    if "=" not in assignment:
        raise MmloraError(f"Override '{assignment}' is not of the form key=value (e.g. train.epochs=3).")
    dotted, raw_value = assignment.split("=", 1)
    keys = dotted.strip().split(".")
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise MmloraError(f"Override '{assignment}': '{key}' is not a section.")
        node = child
    node[keys[-1]] = parse_value(assignment, raw_value)


def recipe_from_dict(data: dict, overrides: list[str] = (), source: str = "recipe") -> Recipe:
    """Build and validate a Recipe from raw data plus `key=value` overrides."""
    from mmlora.overrides import check_override, overrides_named_in

    data = dict(data or {})
    for assignment in overrides:
        check_override(assignment)  # a bad override is named as typed, not as the recipe file
        apply_override(data, assignment)
    try:
        recipe = _build(Recipe, data, "")
        _validate(recipe)
    except MmloraError as err:
        named = overrides_named_in(str(err), list(overrides))
        where = f"{source} with override {', '.join(named)}" if named else source
        raise MmloraError(f"{where}: {err}") from None
    return recipe


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Load a YAML recipe (a path, or the name of a shipped recipe) and apply overrides.

    Relative data paths resolve against the current directory (as paths given on the command
    line do); `asset://...` names data shipped with mmlora, so shipped recipes run anywhere.
    """
    from mmlora.paths import resolve_recipe_path

    path = resolve_recipe_path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise MmloraError(f"{path}: not valid YAML ({err}).") from None
    return recipe_from_dict(data, overrides, source=str(path))


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    """Write the resolved recipe (every field, defaults included) as YAML."""
    Path(path).write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))


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
