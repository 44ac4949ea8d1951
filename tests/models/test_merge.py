"""`mmlora merge`: the command end to end, its refusals, and the check of the written shards.
(Logit equality of merged models is tested per family in test_families.py and per LoRA variant
in test_lora_variants.py.)"""

import json

import pytest
from safetensors.torch import load_file, save_file

from mmlora.errors import MmloraError
from mmlora.models.loading import save_tiny_model
from mmlora.models.merge import merge_adapter, verify_saved_weights
from mmlora.models.tiny import build_tiny_model


@pytest.mark.slow
def test_cli_merge_writes_a_model_that_infer_runs(tmp_path, demo_image, capsys):
    from mmlora.cli import main
    from mmlora.config.loading import load_recipe
    from mmlora.config.paths import assets_dir
    from mmlora.training.train import train

    demo = assets_dir() / "demo"
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join((demo / "vqa_train.jsonl").read_text().splitlines()[:4]) + "\n")
    train(load_recipe("tiny_llava_vqa", [
        f"data.train={data}", f"data.image_root={demo}", f"train.output_dir={tmp_path / 'run'}", "train.max_steps=2",
        "train.batch_size=2", "train.save_steps=0", "train.eval_strategy=never", "eval.generate_at_end=false"]))
    merged = tmp_path / "merged"
    capsys.readouterr()
    assert main(["merge", "--adapter", str(tmp_path / "run"), "--out", str(merged)]) == 0
    assert "each read back and checked" in capsys.readouterr().out
    for name in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja",
                 "preprocessor_config.json", "processor_config.json"):
        assert (merged / name).is_file(), name
    assert main(["infer", "--model", str(merged), "--image", str(demo_image), "--prompt", "What color is it?",
                 "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.strip()
    assert main(["merge", "--adapter", str(tmp_path / "run"), "--out", str(merged)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_merge_refuses_a_quantised_base(tmp_path):
    base = save_tiny_model("tiny/qwen2-vl", tmp_path / "base")
    config = json.loads((base / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (base / "config.json").write_text(json.dumps(config))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    with pytest.raises(MmloraError, match="stored quantised.*Merge into the bf16 base instead"):
        merge_adapter(adapter, tmp_path / "out")


def test_merge_refuses_an_unknown_dtype(tmp_path):
    with pytest.raises(MmloraError, match="--dtype 'int4'"):
        merge_adapter(tmp_path, tmp_path / "out", dtype="int4")


def test_shard_check_catches_a_changed_or_missing_tensor(tmp_path):
    model = build_tiny_model("tiny/qwen2-vl")
    model.save_pretrained(tmp_path, max_shard_size="300KB")
    tensors, shards = verify_saved_weights(tmp_path, model)
    assert shards > 1 and tensors == len(model.state_dict())

    shard = sorted(tmp_path.glob("model-*.safetensors"))[0]
    original = load_file(shard)
    key = sorted(original)[0]
    changed = dict(original)
    changed[key] = original[key].clone()
    changed[key].view(-1)[0] += 1.0
    save_file(changed, shard, metadata={"format": "pt"})
    with pytest.raises(MmloraError, match=f"'{key}' differs from the merged weights"):
        verify_saved_weights(tmp_path, model)

    save_file({k: v for k, v in original.items() if k != key}, shard, metadata={"format": "pt"})
    with pytest.raises(MmloraError, match="does not match the shards' contents"):
        verify_saved_weights(tmp_path, model)
