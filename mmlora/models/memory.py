"""Peak GPU memory and step time of a recipe, estimated before any weights load.

Memory is the sum of what stays allocated through a training step plus what the step adds:
- weights: every base parameter at the model's dtype (QLoRA layers at their quantised size);
- trainable parameters (LoRA in fp32, as PEFT keeps them), their gradients and AdamW's two
  moment buffers (same dtype as the parameter);
- activations saved for backward, measured by a dry run of the language tower on the meta
  device (shapes only, no memory, no compute) at the recipe's batch and length: every tensor
  autograd saves is counted once, with PEFT's real LoRA code, the model's real dtypes (RMSNorm's
  fp32 upcast included) and autocast's bf16 copies of LoRA inputs emulated; attention counts what
  a CUDA flash / memory-efficient kernel keeps (q, k, v, output, log-sum-exp), not a math kernel's
  L x L scores. With gradient checkpointing only each layer's input is kept, plus one layer
  recomputed during backward;
- the loss: logits in fp32 (transformers upcasts them), log-softmax output and two gradients
  of that size at the start of backward: 12 bytes x vocabulary per position with logits; mmlora
  computes them only where a label is trained (mmlora/training/trained_logits.py), the planner assumes
  every position unless told how many are trained;
- a trained projector's inputs (twice: linear input and activation input) per visual token.
A frozen vision tower keeps nothing for backward (mmlora/models/frozen_vision.py); its transient
working memory is small next to the rest and is left out.

Step time: `training_flops` counts a step's FLOPs; divided by a measured FLOP rate (the
benchmark times a bf16 matmul on the GPU) it gives a lower bound on the step time, which
ignores attention kernels' and element-wise ops' lower efficiency and data waits; the benchmark
reports it next to the measured time.
"""

from __future__ import annotations

import dataclasses
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from mmlora.config.schema import Recipe

# Bytes per weight of the quantised language-tower layers (NF4 + double-quantised scales; int8).
QUANTIZED_BYTES = {"4bit": 0.52, "8bit": 1.0}


LOSS_BYTES_PER_LOGIT = 12
"""fp32 log-softmax output + its gradient + the gradient of the fp32 logits, all alive at once."""


@dataclass
class MemoryEstimate:
    """Bytes of each part of the peak (module docstring)."""

    weights: int
    trainable: int
    gradients: int
    optimizer: int
    activations: int
    loss: int
    projector: int
    batch_size: int
    seq_len: int
    gradient_checkpointing: bool

    @property
    def total(self) -> int:
        return (self.weights + self.trainable + self.gradients + self.optimizer + self.activations
                + self.loss + self.projector)


@contextmanager
def _emulate_cuda_training(compute_dtype):
    """Patch F.linear to cast like CUDA autocast does (inputs and weights to `compute_dtype`) and
    SDPA to a stand-in that records what flash / memory-efficient kernels save: q, k, v as
    passed (transformers repeats grouped k/v when it passes a mask), the output, the fp32
    log-sum-exp and, with a mask, the mask converted to an additive bias of q's dtype."""
    import torch
    import torch.nn.functional as F

    kernel_bytes = [0]
    linear, sdpa = F.linear, F.scaled_dot_product_attention

    def autocast_linear(x, weight, bias=None):
        if compute_dtype is not None and compute_dtype != torch.float32:
            x, weight = x.to(compute_dtype), weight.to(compute_dtype)
            bias = bias.to(compute_dtype) if bias is not None else None
        return linear(x, weight, bias)

    def kernel_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        batch, heads, length, _ = query.shape
        out = torch.empty(query.shape[:-1] + value.shape[-1:], dtype=query.dtype, device=query.device)
        kernel_bytes[0] += sum(t.numel() * t.element_size() for t in (query, key, value, out))
        kernel_bytes[0] += batch * heads * length * 4  # log-sum-exp per query row
        if attn_mask is not None:
            kernel_bytes[0] += attn_mask.numel() * query.element_size()
        return out.requires_grad_()  # downstream ops save what they would for a real output

    F.linear, F.scaled_dot_product_attention = autocast_linear, kernel_sdpa
    try:
        yield kernel_bytes
    finally:
        F.linear, F.scaled_dot_product_attention = linear, sdpa


def saved_activations(model, family, batch_size: int, seq_len: int, compute_dtype=None,
                      masked: bool = False) -> tuple[list[int], int]:
    """Bytes autograd saves for backward in the language tower of a meta-device `model` (with
    LoRA attached): per decoder layer, and outside the layers (final norm, position tables).

    masked: attention gets a 4-D mask (padded or packed batches under SDPA/eager); without one
    (flash-attention 2, or no padding) grouped k/v stay unexpanded and no bias is kept."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    text = base.get_submodule(family.language_model)
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    per_layer, outside, current, seen, hooks = [0] * len(text.layers), [0], [], {}, []
    for index, layer in enumerate(text.layers):
        hooks.append(layer.register_forward_pre_hook(lambda m, a, index=index: current.append(index)))
        hooks.append(layer.register_forward_hook(lambda m, a, out: _pop(current)))

    def pack(tensor):
        key = tensor.untyped_storage()._cdata
        if key not in params and key not in seen:  # frozen weights are no activation; count once
            seen[key] = tensor  # held until the end: a freed storage's address could be reused
            nbytes = tensor.untyped_storage().nbytes()
            if current:
                per_layer[current[-1]] += nbytes
            else:
                outside[0] += nbytes
        return tensor

    dtype = compute_dtype or next(text.parameters()).dtype
    embeds = torch.empty(batch_size, seq_len, text.config.hidden_size, device="meta", dtype=dtype, requires_grad=True)
    mask = torch.ones(batch_size, 1, seq_len, seq_len, dtype=torch.bool, device="meta") if masked else None
    attn, training = text.config._attn_implementation, text.training
    text.train()  # dropout keeps its masks only in training mode
    with ExitStack() as stack:
        kernel = stack.enter_context(_emulate_cuda_training(compute_dtype))
        stack.enter_context(torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t))
        text.config._attn_implementation = "sdpa"
        try:
            text(inputs_embeds=embeds, attention_mask=mask, use_cache=False)
        finally:
            text.config._attn_implementation = attn
            text.train(training)
            for hook in hooks:
                hook.remove()
    per_kernel = kernel[0] // max(1, len(text.layers))
    return [n + per_kernel for n in per_layer], outside[0]


def _pop(stack: list) -> None:
    stack.pop()  # returns None: a forward hook's return value would replace the module's output


def meta_lora_model(recipe: Recipe, dtype):
    """The recipe's model built from its config on the meta device, LoRA attached as training does."""
    import torch
    from transformers import AutoModelForImageTextToText

    from mmlora.models.families import family_for_model_type
    from mmlora.models.lora import apply_lora
    from mmlora.models.published import resolve_config

    # The shipped published config stands in where neither the checkpoint nor the hub is at hand.
    config = resolve_config(recipe.model).config
    family = family_for_model_type(config.model_type)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
    lora = dataclasses.replace(recipe.lora, init="default")  # PiSSA/OLoRA need real weights
    return apply_lora(model, family, lora), family


def _bytes(params) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def estimate_memory(recipe: Recipe, batch_size: int | None = None, seq_len: int | None = None,
                    visual_tokens: int = 0, gradient_checkpointing: bool | None = None,
                    dtype=None, model=None, attn_implementation: str | None = None,
                    trained_tokens: int | None = None) -> MemoryEstimate:
    """Peak training memory per GPU for `recipe` (module docstring).

    batch_size / seq_len default to the recipe's train.batch_size and data.max_length (rows
    padded to the longest sample are at most that long); visual_tokens: visual tokens per row,
    used for a trained projector's activations; dtype: the weights' dtype (default: the
    recipe's, bf16 for auto); model: a meta model from `meta_lora_model`, to reuse it;
    attn_implementation: the kernel training will use (default: the recipe's; `auto` is counted
    as SDPA with a mask, the larger of the two, since flash-attn may not be installed);
    trained_tokens: tokens of the batch that carry a label: mmlora computes logits only there
    (mmlora/training/trained_logits.py); default: every token, the bound when the data is not known.
    """
    import torch

    batch_size = batch_size or recipe.train.batch_size
    seq_len = seq_len or recipe.data.max_length
    checkpointing = recipe.train.gradient_checkpointing if gradient_checkpointing is None else gradient_checkpointing
    dtype = dtype or getattr(torch, recipe.model.dtype if recipe.model.dtype != "auto" else "bfloat16")
    if model is None:
        model, family = meta_lora_model(recipe, dtype)
    else:
        from mmlora.models.families import family_for_model_type

        family = family_for_model_type(model.get_base_model().config.model_type)
    trainable = [p for p in model.parameters() if p.requires_grad]
    per_layer, outside = saved_activations(
        model, family, batch_size, seq_len, compute_dtype=dtype,
        masked=(attn_implementation or recipe.train.attn_implementation) != "flash_attention_2")
    if checkpointing:
        hidden = model.get_base_model().get_submodule(family.language_model).config.hidden_size
        kept_inputs = len(per_layer) * batch_size * seq_len * hidden * torch.empty(0, dtype=dtype).element_size()
        activations = kept_inputs + max(per_layer) + outside
    else:
        activations = sum(per_layer) + outside
    vocab = model.get_output_embeddings().weight.shape[0]
    return MemoryEstimate(
        weights=_weights_bytes(model, recipe),
        trainable=_bytes(trainable),
        gradients=_bytes(trainable),
        optimizer=2 * _bytes(trainable),
        activations=activations,
        loss=LOSS_BYTES_PER_LOGIT * (batch_size * seq_len if trained_tokens is None else trained_tokens) * vocab,
        projector=_projector_bytes(model, family, visual_tokens * batch_size, dtype),
        batch_size=batch_size, seq_len=seq_len, gradient_checkpointing=checkpointing,
    )


def _weights_bytes(model, recipe: Recipe) -> int:
    """Frozen parameters at their dtype; QLoRA-quantised language layers at their packed size."""
    quantization = recipe.model.quantization
    adapted = set(model.mmlora_adapted.lora.get("language", []))
    total = 0.0
    for name, param in model.named_parameters():
        if param.requires_grad:
            continue
        layer = name.removeprefix("base_model.model.").removesuffix(".base_layer.weight")
        quantized = quantization != "none" and layer in adapted
        total += param.numel() * (QUANTIZED_BYTES[quantization] if quantized else param.element_size())
    return int(total)


def _projector_bytes(model, family, visual_tokens: int, dtype) -> int:
    """A trained projector keeps each linear's input and each activation's input per visual token."""
    import torch

    base = model.get_base_model()
    from mmlora.models.families import projector_modules

    total = 0
    for name in projector_modules(base, family):
        module = base.get_submodule(name)
        if not any(p.requires_grad for p in module.parameters()):
            continue
        widths = sum(m.in_features for m in module.modules() if isinstance(m, torch.nn.Linear))
        total += 2 * visual_tokens * widths * torch.empty(0, dtype=dtype).element_size()
    return total


def training_flops(model, family, tokens: int, seq_len: int, vision_patches: int = 0) -> float:
    """FLOPs of one training step over `tokens` tokens in rows of `seq_len` (module docstring of
    bench/README.md, "MFU"): the frozen base runs forward and backward to its inputs (2 + 2 per
    weight and token), LoRA adds its weight gradients (2 + 4), lm_head 2 + 2, causal attention
    2 x seq_len x width per token and layer forward and twice that backward; a frozen vision
    tower runs forward only (2 per weight and patch)."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    text = base.get_submodule(family.language_model)
    frozen = lora = 0
    for name, module in text.named_modules():
        if isinstance(module, torch.nn.Linear):
            count = module.weight.numel()
            if ".lora_A." in name or ".lora_B." in name:
                lora += count
            else:
                frozen += count
    head = base.get_output_embeddings().weight.numel()
    layers = len(text.layers)
    head_dim = getattr(text.config, "head_dim", None) or text.config.hidden_size // text.config.num_attention_heads
    heads_dim = text.config.num_attention_heads * head_dim
    attention = 3 * 2 * tokens * seq_len * heads_dim * layers  # causal: half of 4 L^2 d, x3 with backward
    vision = base.get_submodule(family.vision_tower)
    vision_weights = sum(m.weight.numel() for m in vision.modules() if isinstance(m, torch.nn.Linear))
    return 4 * tokens * frozen + 6 * tokens * lora + 4 * tokens * head + attention + 2 * vision_patches * vision_weights


def measure_matmul_rate(device: str, dtype, m: int = 4096, n: int = 4096, k: int = 4096, repeats: int = 10) -> float:
    """Achieved FLOP/s of an (m x k) @ (k x n) matmul on `device`, timed after a warm-up."""
    import time

    import torch

    a, b = torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * m * n * k * repeats / (time.perf_counter() - start)


def format_step_time(recipe: Recipe, model, family, visual_tokens: int) -> str:
    """FLOPs of a step at the recipe's batch x max_length and, on a GPU, the time they take at
    its measured bf16 matmul rate (a lower bound: see the module docstring)."""
    import torch

    tokens = recipe.train.batch_size * recipe.data.max_length
    patches = recipe.train.batch_size * visual_tokens * family.merge_size**2
    flops = training_flops(model, family, tokens, recipe.data.max_length, patches)
    line = f"  training FLOPs per step: {flops / 1e12:.3g} TFLOP"
    if not torch.cuda.is_available():
        return line + " (run `mmlora plan` on the GPU machine for a step time from its measured FLOP rate)"
    rate = measure_matmul_rate("cuda", torch.bfloat16)
    return line + f"; at this GPU's measured {rate / 1e12:.0f} TFLOP/s: at least {1000 * flops / rate:.0f} ms per step"


def _size(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def format_estimate(estimate: MemoryEstimate) -> str:
    """The estimate as the lines `mmlora plan` prints."""
    e = estimate
    ckpt = "with" if e.gradient_checkpointing else "without"
    return (f"  batch {e.batch_size} x {e.seq_len} tokens, {ckpt} gradient checkpointing: {_size(e.total)}\n"
            f"    weights {_size(e.weights)}, trainable + grads + AdamW {_size(e.trainable + e.gradients + e.optimizer)}, "
            f"activations {_size(e.activations + e.projector)}, loss (logits) {_size(e.loss)}")
