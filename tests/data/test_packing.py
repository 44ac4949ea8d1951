"""Multimodal packing: packed and unpacked batches of the same samples give the same per-sample
losses and the same LoRA gradients (Qwen2-VL and LLaVA), mRoPE positions equal the model's own
`get_rope_index`, and the packed layout is exactly what the module docstring promises."""

import pytest
import torch
from PIL import Image

from mmlora.config.schema import LoraConfig, ModelConfig
from mmlora.data.collate import IGNORE_INDEX, TrainingCollator, encode_for_training
from mmlora.data.packing import PackingCollator, mrope_positions, plan_rows
from mmlora.data.samples import Sample, assistant_turn, user_turn
from mmlora.errors import MmloraError
from mmlora.models.loading import load_model_and_processor
from mmlora.models.lora import apply_lora

LONG = "a long answer about the red circle on a white background " * 20
SAMPLES = [  # (image size, colour, answer): one long sample, three short ones that share a row
    ((112, 112), "red", "a"), ((168, 112), "blue", LONG), ((56, 84), "green", "yes"),
    ((140, 112), "white", "blue square"),
]


def make_samples():
    return [Sample([Image.new("RGB", size, colour)], [user_turn("What is it?"), assistant_turn(answer)], f"s{i}")
            for i, (size, colour, answer) in enumerate(SAMPLES)]


@pytest.fixture(scope="module", params=["tiny/qwen2-vl", "tiny/llava"])
def lora_model(request):
    loaded = load_model_and_processor(ModelConfig(name=request.param, max_pixels=224 * 224), device="cpu")
    torch.manual_seed(0)
    model = apply_lora(loaded.model, loaded.family, LoraConfig(dropout=0.0, projector="full"))
    with torch.no_grad():  # B != 0 (as after some training), so both LoRA factors get gradients
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.normal_(std=0.05)
    examples = [encode_for_training(loaded.processor, s, 1024) for s in make_samples()]
    return model.train(), loaded.processor, examples


def per_sample_losses(model, batch, spans):
    """Summed token losses of each sample, from the logits (not the model's mean loss)."""
    logits = model(**batch).logits.float()
    labels = batch["labels"]
    return torch.stack([
        torch.nn.functional.cross_entropy(logits[r, a:b - 1], labels[r, a + 1:b], ignore_index=IGNORE_INDEX,
                                          reduction="sum")
        for r, a, b in spans
    ])


def losses_and_grads(model, batch, spans, n_tokens):
    model.zero_grad()
    losses = per_sample_losses(model, batch, spans)
    (losses.sum() / n_tokens).backward()  # the Trainer's per-token normalisation
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return losses.detach(), grads


@pytest.mark.slow
@pytest.mark.parametrize("attn", ["sdpa", "eager", "flash_attention_2"])
def test_packed_and_unpacked_give_equal_losses_and_lora_gradients(lora_model, attn):
    model, processor, examples = lora_model
    base = model.get_base_model()
    base.set_attn_implementation("eager" if attn == "eager" else "sdpa")
    # flash_attention_2's layout (one row, no mask, positions restarting per sample) is checked
    # under SDPA: transformers reads the same position ids as sample boundaries there too.
    unpacked = TrainingCollator(processor)(examples)
    packed = PackingCollator(processor, attn, torch.float32)(examples)
    assert packed["input_ids"].shape[0] < len(examples)  # samples really share rows
    assert packed["input_ids"].numel() < unpacked["input_ids"].numel()
    lengths = [len(e.input_ids) for e in examples]
    unpacked_spans = [(i, 0, n) for i, n in enumerate(lengths)]
    # the packed spans, in sample order
    rows = [list(range(len(examples)))] if attn == "flash_attention_2" else plan_rows(lengths, max(lengths))
    packed_spans = [None] * len(examples)
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            packed_spans[i] = (r, start, start + lengths[i])
            start += lengths[i]
    n_tokens = int((unpacked["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert n_tokens == int((packed["labels"][:, 1:] != IGNORE_INDEX).sum())

    loss_u, grads_u = losses_and_grads(model, unpacked, unpacked_spans, n_tokens)
    loss_p, grads_p = losses_and_grads(model, packed, packed_spans, n_tokens)
    base.set_attn_implementation("sdpa")
    assert (loss_u > 1.0).all()
    torch.testing.assert_close(loss_p, loss_u, rtol=1e-6, atol=1e-5)
    assert any(".lora_A." in n for n in grads_u) and any(".lora_B." in n for n in grads_u)
    for name, grad in grads_u.items():
        assert grad.abs().sum() > 0, f"{name} got no gradient"
        torch.testing.assert_close(grads_p[name], grad, rtol=1e-5, atol=1e-5, msg=name)


def test_packed_batch_layout(lora_model):
    model, processor, examples = lora_model
    lengths = [len(e.input_ids) for e in examples]
    batch = PackingCollator(processor, "sdpa")(examples)
    rows = plan_rows(lengths, max(lengths))
    assert rows[0] == [1] and sorted(rows[1]) == [0, 2, 3]  # the long sample alone, the rest share a row
    width = lengths[1]
    assert batch["input_ids"].shape == (2, width) and batch["use_cache"] is False
    mask = batch["attention_mask"]
    assert mask.dtype == torch.bool and mask.shape == (2, 1, width, width)
    starts = [sum(lengths[i] for i in rows[1][:k]) for k in range(4)]  # starts[-1]: the padding
    a = starts[rows[1].index(0)]
    b = a + lengths[0]  # sample 0 sits at [a, b) of row 1
    assert mask[1, 0, a:b, a:b].equal(torch.ones(lengths[0], lengths[0], dtype=torch.bool).tril())
    assert not mask[1, 0, a:b, :a].any() and not mask[1, 0, :a, a:].any()  # no attention across samples
    assert not mask[1, 0, b:, a:b].any()
    text_positions = batch["position_ids"][0] if batch["position_ids"].dim() == 3 else batch["position_ids"]
    assert (text_positions[1] == 0).nonzero().flatten().tolist() == starts  # each sample restarts at 0
    pad_start = starts[-1]
    assert (batch["input_ids"][1, pad_start:] == processor.pad_token_id).all()
    assert (batch["labels"][1, pad_start:] == IGNORE_INDEX).all()
    assert mask[1, 0, pad_start:].any(dim=-1).all()  # padding attends to itself: no NaN rows
    for row, start in [(0, 0)] + [(1, start) for start in starts]:
        assert batch["labels"][row, start] == IGNORE_INDEX
    # labels and ids of sample 0 are exactly its own (after its first token)
    assert batch["labels"][1, a + 1:b].tolist() == examples[0].labels[1:]
    assert batch["input_ids"][1, a:b].tolist() == examples[0].input_ids
    eager = PackingCollator(processor, "eager", torch.float32)(examples)["attention_mask"]
    assert eager.dtype == torch.float32 and ((eager == 0) == mask).all()
    if "image_grid_thw" in batch:  # Qwen-VL: vision inputs follow the packed order
        order = rows[0] + rows[1]
        expected = torch.cat([examples[i].vision_inputs["image_grid_thw"] for i in order])
        assert batch["image_grid_thw"].equal(expected)
        assert batch["position_ids"].shape == (4, 2, width)
        assert batch["mm_token_type_ids"].sum() == sum(e.input_ids.count(processor.image_token_id) for e in examples)


def test_plan_rows_first_fit_decreasing():
    rows = plan_rows([5, 9, 3, 4, 9, 1], capacity=10)
    assert rows == [[1, 5], [4], [0, 3], [2]]
    assert sorted(i for row in rows for i in row) == list(range(6))
    assert plan_rows([12, 3], capacity=10) == [[0], [1]]  # too long: a row of its own


@pytest.mark.parametrize("model_id", ["tiny/qwen2-vl", "tiny/qwen2.5-vl", "tiny/qwen3-vl"])
def test_mrope_positions_equal_the_models_get_rope_index(model_id):
    from transformers import AutoModelForImageTextToText

    from mmlora.data.scan import load_data_processor
    from mmlora.models.tiny import tiny_dir

    processor = load_data_processor(ModelConfig(name=model_id, max_pixels=224 * 224))
    config = processor.model_config
    with torch.device("meta"):  # get_rope_index needs the config only, not weights
        model = AutoModelForImageTextToText.from_config(config)
    assert tiny_dir(model_id).is_dir()
    two_images = Sample([Image.new("RGB", (112, 168)), Image.new("RGB", (224, 56))],
                        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "and"},
                                                      {"type": "image"}, {"type": "text", "text": "Same?"}]},
                         assistant_turn("no")], "two")
    example = encode_for_training(processor, two_images, 1024)
    ids = torch.tensor([example.input_ids])
    types = (ids == processor.image_token_id).long()
    grids = example.vision_inputs["image_grid_thw"]
    expected, _ = model.model.get_rope_index(ids, types, image_grid_thw=grids)
    ours = mrope_positions(types[0].tolist(), grids, processor.family.merge_size)
    assert ours.equal(expected[:, 0])
    assert ours[1].max() < len(example.input_ids) - 1  # images advance positions by max(h, w), not h*w


def test_packing_refuses_families_with_non_causal_attention():
    from mmlora.data.scan import load_data_processor

    processor = load_data_processor(ModelConfig(name="tiny/gemma3"))
    with pytest.raises(MmloraError, match="data.packing is not supported for gemma3.*token_type_ids"):
        PackingCollator(processor)


def test_dataloader_workers_auto():
    import os

    from mmlora.config.loading import recipe_from_dict
    from mmlora.training.batches import dataloader_workers

    assert dataloader_workers(-1, "cpu") == 0  # the model's threads already use every core
    assert dataloader_workers(-1, "cuda") == min(4, os.cpu_count() - 1)
    assert dataloader_workers(2, "cpu") == 2 and dataloader_workers(0, "cuda") == 0
    with pytest.raises(MmloraError, match="train.num_workers: got -2"):
        recipe_from_dict({"data": {"train": "x.jsonl"}, "train": {"num_workers": -2}})
