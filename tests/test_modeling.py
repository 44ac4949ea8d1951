import subprocess
import sys

import pytest
import torch

from mmlora.config import ModelConfig
from mmlora.errors import MmloraError
from mmlora.modeling import load_model_and_processor, save_tiny_model
from mmlora.tiny import build_tiny_model


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


def test_unreachable_hub_fails_fast_in_one_line():
    env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "PATH": "/usr/bin:/bin",
           "HF_HOME": "/nonexistent-mmlora-cache"}
    result = subprocess.run(
        [sys.executable, "-c",
         "from mmlora.cli import main; raise SystemExit(main(['train', 'tiny_vqa', 'model.name=Qwen/Qwen2-VL-2B-Instruct']))"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("mmlora: error")]
    assert len(errors) == 1 and "Hugging Face Hub" in errors[0] and "local directory" in errors[0]
    assert "Traceback" not in result.stderr


def test_unsupported_family_lists_supported(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(MmloraError, match="Supported model types: qwen2_vl"):
        load_model_and_processor(ModelConfig(name=str(tmp_path)))
