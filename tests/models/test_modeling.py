import os
import subprocess
import sys

import pytest
import torch

from mmlora.config.schema import ModelConfig
from mmlora.errors import MmloraError
from mmlora.models.loading import load_model_and_processor, save_tiny_model
from mmlora.models.tiny import build_tiny_model


def test_tiny_model_is_seeded_and_does_not_disturb_the_callers_rng():
    torch.manual_seed(0)
    expected_next = torch.rand(3)
    torch.manual_seed(0)
    a = build_tiny_model("tiny/qwen2-vl")
    assert torch.equal(torch.rand(3), expected_next)
    b = build_tiny_model("tiny/qwen2-vl")
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name
    assert a.config.text_config.num_hidden_layers == 2 and a.config.vision_config.depth == 2


def test_tiny_model_saves_and_loads_back_through_the_real_path(tmp_path, tiny):
    out = save_tiny_model("tiny/qwen2-vl", tmp_path / "tiny")
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    reloaded = load_model_and_processor(ModelConfig(name=str(out), max_pixels=224 * 224), device="cpu")
    ids = torch.tensor([[1, 40, 41, 42, 2]])
    with torch.no_grad():
        assert torch.equal(reloaded.model(input_ids=ids).logits, tiny.model(input_ids=ids).logits)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}]
    assert reloaded.processor.render(messages) == tiny.processor.render(messages)


def test_cpu_dtype_is_float32(tiny):
    assert next(tiny.model.parameters()).dtype == torch.float32


def test_unreachable_hub_fails_fast_in_one_line(tmp_path):
    env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "PATH": "/usr/bin:/bin",
           "HF_HOME": "/nonexistent-mmlora-cache"}
    result = subprocess.run(
        [sys.executable, "-c",
         "from mmlora.cli import main; raise SystemExit(main(['train', 'tiny_vqa', "
         f"'model.name=Qwen/Qwen2-VL-2B-Instruct', 'train.output_dir={tmp_path / 'run'}']))"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("mmlora: error")]
    assert len(errors) == 1 and "Hugging Face Hub" in errors[0] and "is no local folder" in errors[0]
    assert "Traceback" not in result.stderr


def test_unsupported_family_lists_supported(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(MmloraError, match=r"'bert' is not supported.*qwen2_vl \(qwen2_vl\).*idefics3 \(idefics3, smolvlm\)"):
        load_model_and_processor(ModelConfig(name=str(tmp_path)))


# ---------------------------------------------------------------------------------------------
# QLoRA: bitsandbytes 4/8-bit loading. The GPU test runs where CUDA is present; on CPU the error
# must say what to do.


def test_quantization_on_cpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(MmloraError, match=r"quantization=4bit \(QLoRA\) needs a CUDA GPU.*model.quantization=none"):
        load_model_and_processor(ModelConfig(name="tiny/qwen2-vl", quantization="4bit"))


def test_quantization_without_bitsandbytes_is_a_clear_error(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a))
    with pytest.raises(MmloraError, match=r"quantization=8bit needs bitsandbytes.*pip install bitsandbytes"):
        load_model_and_processor(ModelConfig(name="tiny/qwen2-vl", quantization="8bit", dtype="float32"), device="cpu")


def test_qlora_recipe_on_cpu_fails_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mmlora", "train", "tiny_vqa", "model.quantization=4bit",
         f"train.output_dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=180, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("mmlora: error")]
    assert len(errors) == 1 and "a CUDA GPU" in errors[0] and "model.quantization=none" in errors[0]
    assert "Traceback" not in result.stderr


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bitsandbytes)")
@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_qlora_trains_the_tiny_model_on_gpu(tmp_path, bits):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    from mmlora.config.loading import load_recipe
    from mmlora.config.paths import assets_dir
    from mmlora.data.collate import TrainingCollator, encode_for_training
    from mmlora.data.loading import load_samples
    from mmlora.training.train import train

    demo = assets_dir() / "demo"
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join((demo / "vqa_train.jsonl").read_text().splitlines()[:16]) + "\n")
    recipe = load_recipe("tiny_vqa", [
        f"model.quantization={bits}", "model.dtype=bfloat16", f"data.train={data}", f"data.image_root={demo}",
        f"train.output_dir={tmp_path / 'run'}", "train.max_steps=8", "train.batch_size=4",
        "train.save_steps=0", "train.eval_strategy=never", "eval.generate_at_end=false",
    ])
    loaded = load_model_and_processor(recipe.model)
    layer = loaded.model.model.language_model.layers[0].self_attn.q_proj
    assert isinstance(layer, bnb.nn.Linear4bit if bits == "4bit" else bnb.nn.Linear8bitLt)
    assert not isinstance(loaded.model.model.visual.merger.mlp[0], (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))
    samples = load_samples(str(data), recipe.data, recipe.task)
    batch = TrainingCollator(loaded.processor)([encode_for_training(loaded.processor, s, 256) for s in samples])
    batch = {k: v.to("cuda") for k, v in batch.items()}
    with torch.no_grad():
        before = loaded.model(**batch).loss.item()
    result = train(recipe, loaded=loaded)
    result.model.eval()
    with torch.no_grad():
        after = result.model(**batch).loss.item()
    assert after < 0.9 * before
    assert (result.output_dir / "adapter_model.safetensors").is_file()
