"""No wasted vision work: a frozen vision tower runs without building an autograd graph.

Why this is needed: nothing in the vision tower is trained, yet autograd may still record its
whole forward. transformers' `enable_input_require_grads` (called by the Trainer whenever
gradient checkpointing is on, and by PEFT's k-bit preparation) hooks *every* input embedding of
the model, the vision tower's patch embedding included, so the patch features require grad and
every vision block keeps its activations for a backward pass that computes nothing useful.

`skip_frozen_vision_graph` runs the vision tower's forward under `torch.no_grad()`. A trained
projector that lives inside the tower (Qwen-VL's `visual.merger`, Qwen3-VL's DeepStack
mergers) runs under `torch.enable_grad()` again, so only the projector keeps its graph. A
projector outside the tower (LLaVA, Gemma 3, ...) is untouched: it already runs with grad after
the tower returns. With LoRA on the vision tower (lora.vision=lora) nothing changes.
"""

from __future__ import annotations

import functools

from mmlora.models.families import Family, find_module, projector_modules

_MARK = "_mmlora_grad_mode"


def _wrap_forward(module, grad_mode) -> None:
    """Run `module`'s forward under `grad_mode` (torch.no_grad / torch.enable_grad), once."""
    if getattr(module, _MARK, None) is not None:
        return
    forward = module.forward

    @functools.wraps(forward)
    def forward_in_mode(*args, **kwargs):
        with grad_mode():
            return forward(*args, **kwargs)

    module.forward = forward_in_mode  # an instance attribute: nn.Module.__call__ reads self.forward
    setattr(module, _MARK, grad_mode.__name__)


def _has_trainable(module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def skip_frozen_vision_graph(model, family: Family) -> bool:
    """Make the frozen vision tower of `model` (a PeftModel or a plain model) run without autograd.

    Returns False (and changes nothing) when a parameter of the tower outside the projector is
    trained. Call after LoRA is attached, so `requires_grad` says what is trained.
    """
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    tower = find_module(base, family.vision_tower, family)
    inside = [name for name in projector_modules(base, family) if name.startswith(family.vision_tower + ".")]
    projector_params = {id(p) for name in inside for p in base.get_submodule(name).parameters()}
    if any(p.requires_grad and id(p) not in projector_params for p in tower.parameters()):
        return False
    _wrap_forward(tower, torch.no_grad)
    for name in inside:
        projector = base.get_submodule(name)
        if _has_trainable(projector):
            _wrap_forward(projector, torch.enable_grad)
    return True
