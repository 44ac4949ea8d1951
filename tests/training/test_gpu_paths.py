"""The CUDA-only training paths, run on a GPU by `make gpu-check` (bench/gpu_check.py) and
skipped elsewhere:

- packing under flash-attention 2: the whole batch in one row, no mask, sample boundaries read
  from the restarting position ids (transformers' varlen path), gives the per-sample losses and
  LoRA gradients that the unpacked, padded batch gives under SDPA; and the same row with
  positions that do not restart (boundaries lost) does not, so the comparison can fail;
- Liger (train.liger=true): its kernels give the plain model's loss without materialising the
  logits, and training with them learns.
The CPU side of both (layout, SDPA/eager equality, clear errors) is in test_packing.py and
test_vision_frozen.py.
"""

from __future__ import annotations

import pytest
import torch

from mmlora.config.schema import LoraConfig, ModelConfig
from mmlora.data.collate import IGNORE_INDEX, TrainingCollator, encode_for_training
from mmlora.data.packing import PackingCollator
from mmlora.models.loading import load_model_and_processor
from mmlora.models.lora import apply_lora
from tests.data.test_packing import losses_and_grads, make_samples  # the CPU equality test's samples and sums

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def on_cuda(batch: dict) -> dict:
    return {k: v.to("cuda") if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@pytest.fixture(scope="module")
def bf16_lora_model():
    """The tiny Qwen2-VL in bf16 on the GPU with LoRA (B != 0, so both factors get gradients)."""
    loaded = load_model_and_processor(ModelConfig(name="tiny/qwen2-vl", max_pixels=224 * 224, dtype="bfloat16"),
                                      device="cuda", attn_implementation="sdpa")
    torch.manual_seed(0)
    model = apply_lora(loaded.model, loaded.family, LoraConfig(dropout=0.0))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.normal_(std=0.05)
    examples = [encode_for_training(loaded.processor, s, 1024) for s in make_samples()]
    return model.train(), loaded.processor, examples


@pytest.mark.gpu
@needs_cuda
def test_packed_flash_attention_losses_equal_unpacked_sdpa(bf16_lora_model):
    pytest.importorskip("flash_attn", reason="flash-attn is not installed (PyPI has no binary wheel of it)")
    model, processor, examples = bf16_lora_model
    base = model.get_base_model()
    lengths = [len(e.input_ids) for e in examples]
    unpacked = on_cuda(TrainingCollator(processor)(examples))
    packed = on_cuda(PackingCollator(processor, "flash_attention_2", torch.bfloat16)(examples))
    assert packed["input_ids"].shape == (1, sum(lengths)) and "attention_mask" not in packed  # one row, no padding
    n_tokens = int((unpacked["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert n_tokens == int((packed["labels"][:, 1:] != IGNORE_INDEX).sum())
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    unpacked_spans = [(i, 0, n) for i, n in enumerate(lengths)]
    packed_spans = [(0, a, a + n) for a, n in zip(starts, lengths)]

    base.set_attn_implementation("sdpa")
    loss_u, grads_u = losses_and_grads(model, unpacked, unpacked_spans, n_tokens)
    base.set_attn_implementation("flash_attention_2")
    try:
        loss_p, grads_p = losses_and_grads(model, packed, packed_spans, n_tokens)
        crossing = dict(packed, position_ids=packed["position_ids"].clone())
        crossing["position_ids"][0, 0] = torch.arange(sum(lengths), device="cuda")  # text row: one sequence
        loss_x, _ = losses_and_grads(model, crossing, packed_spans, n_tokens)
    finally:
        base.set_attn_implementation("sdpa")

    # bf16 through different kernels: per-sample summed losses agree to 1%, gradients in direction
    # and size; attending across samples moves the short samples' losses far more than that.
    assert (loss_u > 1.0).all()
    torch.testing.assert_close(loss_p, loss_u, rtol=1e-2, atol=0.0)
    assert ((loss_x - loss_u).abs() / loss_u)[1:].max() > 0.05, "boundaries ignored yet same losses: test is blind"
    for name, grad in grads_u.items():
        assert grad.abs().sum() > 0, f"{name} got no gradient"
        other = grads_p[name].float().flatten()
        cosine = torch.nn.functional.cosine_similarity(other, grad.float().flatten(), dim=0)
        assert cosine > 0.99, f"{name}: cosine {cosine:.4f}"
        assert abs(other.norm() / grad.float().norm() - 1) < 0.05, name


@pytest.fixture
def restores_qwen2_vl():
    """Liger also replaces functions and classes of transformers' qwen2_vl module (rope, RMSNorm,
    MLP), which every later model of this pytest process would be built with: put them back."""
    from transformers.models.qwen2_vl import modeling_qwen2_vl

    saved = dict(vars(modeling_qwen2_vl))
    yield
    for name in set(vars(modeling_qwen2_vl)) - set(saved):
        delattr(modeling_qwen2_vl, name)
    for name, value in saved.items():
        setattr(modeling_qwen2_vl, name, value)


@pytest.mark.gpu
@needs_cuda
def test_liger_kernels_give_the_plain_loss_without_logits(restores_qwen2_vl):
    pytest.importorskip("liger_kernel", reason="liger-kernel is not installed")
    from transformers.integrations.liger import apply_liger_kernel

    loaded = load_model_and_processor(ModelConfig(name="tiny/qwen2-vl", max_pixels=224 * 224, dtype="float32"),
                                      device="cuda", attn_implementation="sdpa")
    model = loaded.model.train()  # Liger's fused loss runs in training mode only (no dropout in the tiny model)
    examples = [encode_for_training(loaded.processor, s, 1024) for s in make_samples()]
    batch = on_cuda(TrainingCollator(loaded.processor)(examples))
    with torch.no_grad():
        plain = model(**batch)
        apply_liger_kernel(model, None)  # what the Trainer does for train.liger=true
        fused = model(**batch)
    assert plain.logits is not None and fused.logits is None  # the fused linear cross-entropy ran
    torch.testing.assert_close(fused.loss, plain.loss, rtol=1e-3, atol=0.0)


@pytest.mark.gpu
@pytest.mark.slow
@needs_cuda
def test_training_with_liger_learns(tmp_path, restores_qwen2_vl):
    pytest.importorskip("liger_kernel", reason="liger-kernel is not installed")
    from mmlora.config.loading import load_recipe
    from mmlora.config.paths import assets_dir
    from mmlora.data.loading import load_samples
    from mmlora.training.train import train

    demo = assets_dir() / "demo"
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join((demo / "vqa_train.jsonl").read_text().splitlines()[:16]) + "\n")
    recipe = load_recipe("tiny_vqa", [
        "train.liger=true", "model.dtype=bfloat16", f"data.train={data}", f"data.image_root={demo}",
        f"train.output_dir={tmp_path / 'run'}", "train.max_steps=8", "train.batch_size=4",
        "train.save_steps=0", "train.eval_strategy=never", "eval.generate_at_end=false",
    ])
    loaded = load_model_and_processor(recipe.model)
    samples = load_samples(str(data), recipe.data, recipe.task)
    batch = on_cuda(TrainingCollator(loaded.processor)([encode_for_training(loaded.processor, s, 256) for s in samples]))
    with torch.no_grad():
        before = loaded.model(**batch).loss.item()
    result = train(recipe, loaded=loaded)
    result.model.eval()  # eval mode: the plain loss, comparable with `before`
    with torch.no_grad():
        after = result.model(**batch).loss.item()
    assert after < 0.9 * before
    assert (result.output_dir / "adapter_model.safetensors").is_file()
