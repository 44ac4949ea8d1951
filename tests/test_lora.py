import re

import pytest
import torch

from mmlora.config import LoraConfig
from mmlora.errors import MmloraError
from mmlora.lora import apply_lora, count_parameters

LAYERS = 2
LANGUAGE = [f"model.language_model.layers.{i}.{m}" for i in range(LAYERS) for m in
            ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
MERGER_LINEARS = ["model.visual.merger.mlp.0", "model.visual.merger.mlp.2"]


def lora_names(modules):
    return {f"base_model.model.{m}.lora_{ab}.default.weight" for m in modules for ab in "AB"}


def expected_trainable(projector: str) -> set[str]:
    names = lora_names(LANGUAGE)
    if projector == "lora":
        names |= lora_names(MERGER_LINEARS)
    if projector == "full":
        names |= {f"base_model.model.model.visual.merger.modules_to_save.default.{p}" for p in
                  ("ln_q.weight", "ln_q.bias", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias")}
    return names


@pytest.mark.parametrize("projector", ["frozen", "lora", "full"])
def test_trainable_parameter_names_are_exactly_expected(tiny, projector):
    model = apply_lora(tiny.model, tiny.family, LoraConfig(projector=projector))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == expected_trainable(projector)
    counts = {c.component: c for c in count_parameters(model, tiny.family)}
    assert counts["vision"].trainable == 0
    assert (counts["projector"].trainable > 0) == (projector != "frozen")
    assert counts["total"].trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_lora_starts_exactly_at_the_base_model(tiny):
    batch = {"input_ids": torch.tensor([[1, 50, 60, 70, 2]])}
    with torch.no_grad():
        before = tiny.model(**batch).logits
        model = apply_lora(tiny.model, tiny.family, LoraConfig(dropout=0.0))
        after = model(**batch).logits
    assert torch.equal(before, after)  # B = 0 at init


def test_target_matching_nothing_is_an_error(tiny):
    with pytest.raises(MmloraError, match=r"\['qkv_proj'\] match no linear layer.*Available: down_proj"):
        apply_lora(tiny.model, tiny.family, LoraConfig(targets=["q_proj", "qkv_proj"]))


def test_subset_of_targets(tiny):
    model = apply_lora(tiny.model, tiny.family, LoraConfig(targets=["q_proj", "v_proj"]))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == lora_names([m for m in LANGUAGE if re.search(r"\.(q|v)_proj$", m)])
