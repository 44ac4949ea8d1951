"""The train<->serve contract (issue #11 items 3 and 7): every saved folder reloads with the
trained preprocessing, in plain transformers (with and without torchvision) and in mmlora, and an
adapter is applied only to the base model it fits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmlora.cli import main
from mmlora.config.loading import load_recipe, load_recipe_and_set_keys
from mmlora.config.schema import ModelConfig
from mmlora.errors import MmloraError
from mmlora.inference.infer import answer_one
from mmlora.models.adapter_loading import load_with_adapter, model_config_for
from mmlora.models.loading import load_model_and_processor, save_tiny_model
from mmlora.models.lora import apply_lora
from mmlora.models.merge import merge_adapter
from mmlora.models.processor_files import RECORD_FILE, recipe_sets_bounds
from mmlora.training.train import save_outputs, train
from tests.torchvision_peer import run_script

RELOAD = Path(__file__).resolve().parent / "saved_folder_reload.py"
QWEN_BOUNDS = (56 * 56, 28 * 28 * 20)  # 20 visual tokens at most: far below the twins' 50176 px


def _reload(entries: list[dict], torchvision: bool) -> list[dict]:
    out = run_script(RELOAD, [json.dumps(entries)], torchvision=torchvision)
    return json.loads(out.strip().splitlines()[-1].removeprefix("RESULT "))


def _all_true(result: dict, *keys: str) -> bool:
    return all(all(result[k].values()) if isinstance(result[k], dict) else result[k] is True for k in keys)


def test_saved_folders_reload_with_the_training_inputs_without_torchvision():
    families = [("tiny/qwen2-vl", *QWEN_BOUNDS), ("tiny/qwen3-vl", 64 * 64, 32 * 32 * 20),
                ("tiny/llava", *QWEN_BOUNDS), ("tiny/llava-next", *QWEN_BOUNDS),
                ("tiny/smolvlm", 3136, 168 * 168), ("tiny/gemma3", *QWEN_BOUNDS)]
    results = _reload([{"model": m, "min_pixels": lo, "max_pixels": hi} for m, lo, hi in families], False)
    for (model, *_), result in zip(families, results):
        assert _all_true(result, "image_processor", "template", "mmlora"), (model, result)
        if model.startswith("tiny/qwen"):
            # Qwen-VL processors need torchvision (their video processor): AutoProcessor must say
            # so, not fall back to a bare tokenizer as it did when processor_class was dropped.
            assert result["processor"].startswith("ImportError") and "Torchvision" in result["processor"], result
        else:
            assert result["processor"].endswith("Processor"), (model, result)
            assert _all_true(result, "input_ids", "vision"), (model, result)


def test_saved_folders_reload_with_the_training_inputs_with_torchvision():
    families = [("tiny/qwen2-vl", *QWEN_BOUNDS), ("tiny/qwen2.5-vl", *QWEN_BOUNDS),
                ("tiny/qwen3-vl", 64 * 64, 32 * 32 * 20), ("tiny/llava", *QWEN_BOUNDS),
                ("tiny/smolvlm", 3136, 168 * 168), ("tiny/gemma3", *QWEN_BOUNDS)]
    results = _reload([{"model": m, "min_pixels": lo, "max_pixels": hi} for m, lo, hi in families], True)
    for (model, *_), result in zip(families, results):
        assert result["processor"].endswith("Processor"), (model, result)
        assert _all_true(result, "image_processor", "template", "mmlora", "input_ids", "vision"), (model, result)


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_saved_files_state_the_trained_bounds_in_every_key_transformers_reads(tmp_path):
    base = save_tiny_model("tiny/qwen2-vl", tmp_path / "base")
    lo, hi = QWEN_BOUNDS
    loaded = load_model_and_processor(ModelConfig(name=str(base), min_pixels=lo, max_pixels=hi), device="cpu")
    loaded.processor.save_pretrained(tmp_path / "saved")
    flat = _json(tmp_path / "saved" / "preprocessor_config.json")
    nested = _json(tmp_path / "saved" / "processor_config.json")
    assert flat["size"] == {"shortest_edge": lo, "longest_edge": hi}
    # Top-level keys only where the checkpoint has them (next test), and then with the same values.
    assert (flat.get("min_pixels", lo), flat.get("max_pixels", hi)) == (lo, hi)
    assert nested["image_processor"] == {k: v for k, v in flat.items() if k != "processor_class"}
    assert flat["processor_class"] == nested["processor_class"] == "Qwen2VLProcessor"
    assert _json(tmp_path / "saved" / "tokenizer_config.json")["processor_class"] == "Qwen2VLProcessor"
    assert (tmp_path / "saved" / "chat_template.jinja").read_text() == loaded.processor.chat_template
    assert _json(tmp_path / "saved" / RECORD_FILE) == {
        "base_model": str(base.resolve()), "family": "qwen2_vl", "model_type": "qwen2_vl",
        "min_pixels": lo, "max_pixels": hi, "processor_class": "Qwen2VLProcessor"}


def test_writer_keeps_published_top_level_bounds_consistent(tmp_path, tiny):
    """A checkpoint in Qwen2-VL's published format (top-level min/max_pixels, no `size`): the
    saved folder states the trained bounds in both forms, so neither shadows the other."""
    from transformers import AutoImageProcessor

    from mmlora.models.processor import load_processor

    published = tmp_path / "published"
    shutil.copytree(tiny.processor.tokenizer.name_or_path, published)
    config = _json(published / "preprocessor_config.json")
    config.pop("size", None)  # the twins already use this layout; a copy of an older one may not
    config.update(min_pixels=3136, max_pixels=12845056)
    (published / "preprocessor_config.json").write_text(json.dumps(config))
    processor = load_processor(str(published), tiny.family, 6272, 15680, model_config=tiny.model.config)
    processor.save_pretrained(tmp_path / "saved")
    flat = _json(tmp_path / "saved" / "preprocessor_config.json")
    assert (flat["min_pixels"], flat["max_pixels"]) == (6272, 15680)
    assert flat["size"] == {"shortest_edge": 6272, "longest_edge": 15680}
    assert _json(tmp_path / "saved" / "processor_config.json")["image_processor"]["max_pixels"] == 15680
    reloaded = AutoImageProcessor.from_pretrained(tmp_path / "saved")
    assert (reloaded.size["shortest_edge"], reloaded.size["longest_edge"]) == (6272, 15680)


def test_infer_uses_a_saved_model_folders_bounds_unless_told_otherwise(tmp_path):
    (tmp_path / RECORD_FILE).write_text(json.dumps({"min_pixels": 6272, "max_pixels": 15680}))
    cfg = model_config_for(str(tmp_path), None, None, None)
    assert (cfg.min_pixels, cfg.max_pixels) == (6272, 15680)
    cfg = model_config_for(str(tmp_path), None, None, 50176)
    assert (cfg.min_pixels, cfg.max_pixels) == (6272, 50176)  # an explicit --max-pixels wins
    cfg = model_config_for(str(tmp_path / "elsewhere"), None, None, None)
    assert (cfg.min_pixels, cfg.max_pixels) == (ModelConfig().min_pixels, ModelConfig().max_pixels)


def test_recipe_sets_bounds_only_when_the_file_or_an_override_says_so(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("task: vqa\nmodel:\n  name: tiny/qwen2-vl\ndata:\n  train: x.jsonl\n")
    assert not recipe_sets_bounds(load_recipe_and_set_keys(str(recipe), [])[1])
    assert recipe_sets_bounds(load_recipe_and_set_keys(str(recipe), ["model.max_pixels=50176"])[1])
    assert recipe_sets_bounds(load_recipe_and_set_keys("tiny_vqa", [])[1])  # the shipped recipe states its bounds


def test_eval_uses_the_trained_bounds_unless_the_recipe_sets_its_own(tmp_path, capsys):
    from mmlora.config.loading import save_recipe
    from mmlora.evaluation.run import use_trained_bounds

    save_recipe(load_recipe("tiny_vqa", ["model.min_pixels=6272", "model.max_pixels=15680"]),
                tmp_path / "recipe.yaml")
    recipe = load_recipe("tiny_vqa")
    use_trained_bounds(recipe, tmp_path, recipe_sets_bounds=False)
    assert (recipe.model.min_pixels, recipe.model.max_pixels) == (6272, 15680)
    assert "using the trained min/max_pixels 6272/15680" in capsys.readouterr().err
    recipe = load_recipe("tiny_vqa")
    use_trained_bounds(recipe, tmp_path, recipe_sets_bounds=True)
    assert (recipe.model.min_pixels, recipe.model.max_pixels) == (3136, 50176)
    assert "trained with min/max_pixels 6272/15680; evaluating at 3136/50176" in capsys.readouterr().err


# --- adapters applied to another base (item 7) ---------------------------------------------

def _write_adapter(model_name: str, out: Path, recipe_name: str = "tiny_vqa") -> Path:
    """An untrained adapter written exactly as `mmlora train` writes one."""
    recipe = load_recipe(recipe_name, [f"model.name={model_name}", f"train.output_dir={out}"])
    loaded = load_model_and_processor(recipe.model, device="cpu")
    save_outputs(out, apply_lora(loaded.model, loaded.family, recipe.lora), loaded, recipe, [])
    return out


@pytest.fixture(scope="module")
def llava_adapter(tmp_path_factory):
    return _write_adapter("tiny/llava", tmp_path_factory.mktemp("llava") / "adapter", "tiny_llava_vqa")


def test_infer_refuses_an_adapter_of_another_family_in_one_line(llava_adapter, demo_image, capsys):
    with pytest.raises(MmloraError, match=r"trained on a llava model, but 'tiny/qwen2-vl' is qwen2_vl"):
        answer_one("tiny/qwen2-vl", str(llava_adapter), str(demo_image), "What colour?", 2)
    capsys.readouterr()
    assert main(["infer", "--model", "tiny/qwen2-vl", "--adapter", str(llava_adapter),
                 "--image", str(demo_image), "--prompt", "What colour?"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "running on CPU" not in line]
    assert len(err) == 1 and err[0].startswith("mmlora: error: Adapter") and "trained on a llava model" in err[0]


def test_merge_refuses_an_adapter_of_another_family_before_writing(llava_adapter, tmp_path):
    with pytest.raises(MmloraError, match="trained on a llava model"):
        merge_adapter(llava_adapter, tmp_path / "merged", dtype="fp32", base="tiny/qwen2-vl")
    assert not (tmp_path / "merged").exists()


def test_eval_refuses_an_adapter_of_another_family_and_keeps_the_earlier_report(llava_adapter):
    from mmlora.evaluation.run import run_eval

    _, out = run_eval(load_recipe("tiny_llava_vqa"), str(llava_adapter), limit=2)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(MmloraError, match="trained on a llava model, but 'tiny/qwen2-vl' is qwen2_vl"):
        run_eval(load_recipe("tiny_vqa"), str(llava_adapter), limit=2)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_adapter_without_a_record_is_refused_by_its_modules(llava_adapter, tmp_path):
    """An adapter from elsewhere (no mmlora.json, a base not available here): the module names
    and shapes in adapter_model.safetensors still decide."""
    bare = tmp_path / "bare"
    shutil.copytree(llava_adapter, bare)
    (bare / RECORD_FILE).unlink()
    config = _json(bare / "adapter_config.json")
    config["base_model_name_or_path"] = "someone/unknown-model"
    (bare / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(MmloraError, match=r"does not fit 'tiny/qwen2-vl': it adapts '.*', which that model does not have"):
        load_with_adapter(ModelConfig(name="tiny/qwen2-vl"), str(bare), device="cpu")


def test_adapter_of_another_model_size_is_refused_by_its_shapes(tmp_path):
    from transformers import AutoConfig, AutoModelForImageTextToText

    from mmlora.models.tiny import tiny_dir

    adapter = _write_adapter("tiny/qwen2-vl", tmp_path / "adapter")
    wider = tmp_path / "wider"  # same family, another MLP width: an adapter of another model size
    config = AutoConfig.from_pretrained(tiny_dir("tiny/qwen2-vl"))
    config.text_config.intermediate_size = 96
    AutoModelForImageTextToText.from_config(config).save_pretrained(wider)
    load_model_and_processor(ModelConfig(name="tiny/qwen2-vl"), device="cpu").processor.save_pretrained(wider)
    with pytest.raises(MmloraError, match=r"mlp\.down_proj\.lora_A\.weight' is \[16, 128\] in the adapter but "
                                          r"the model needs \[16, 96\]"):
        load_with_adapter(ModelConfig(name=str(wider)), str(adapter), device="cpu")
    with pytest.raises(MmloraError, match="does not fit"):
        merge_adapter(adapter, tmp_path / "merged", base=str(wider))


def test_adapter_on_a_relative_local_model_loads_from_another_directory(tmp_path, monkeypatch):
    (tmp_path / "A").mkdir(), (tmp_path / "B").mkdir()
    save_tiny_model("tiny/qwen2-vl", tmp_path / "A" / "base")
    monkeypatch.chdir(tmp_path / "A")
    adapter = _write_adapter("base", tmp_path / "A" / "run")  # model.name=base, relative
    absolute = str((tmp_path / "A" / "base").resolve())
    assert _json(adapter / "adapter_config.json")["base_model_name_or_path"] == absolute
    assert _json(adapter / RECORD_FILE)["base_model"] == absolute
    monkeypatch.chdir(tmp_path / "B")
    cfg = model_config_for(None, str(adapter), None, None)
    assert cfg.name == absolute
    load_with_adapter(cfg, str(adapter), device="cpu")


# --- end to end: train with a relative path, serve from elsewhere -------------------------

def _picture(path: Path, size: tuple[int, int], seed: int) -> Path:
    generator = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(size[1], size[0], 3, generator=generator) * 255).to(torch.uint8).numpy()
    Image.fromarray(pixels).save(path)
    return path


@pytest.mark.slow
def test_merged_model_and_base_plus_adapter_see_and_answer_alike_from_another_directory(
        tmp_path, monkeypatch, capsys):
    from transformers import AutoImageProcessor

    from mmlora.config.paths import assets_dir

    lo, hi = QWEN_BOUNDS
    run_dir, serve_dir = tmp_path / "A", tmp_path / "B"
    run_dir.mkdir(), serve_dir.mkdir()
    save_tiny_model("tiny/qwen2-vl", run_dir / "base")
    demo = assets_dir() / "demo"
    monkeypatch.chdir(run_dir)  # trained with a relative model path, as users write it
    train(load_recipe("tiny_vqa", [
        "model.name=base", f"model.min_pixels={lo}", f"model.max_pixels={hi}", "train.output_dir=run",
        f"data.train={demo / 'vqa_train.jsonl'}", f"data.image_root={demo}", "data.eval=null",
        "train.max_steps=2", "train.batch_size=2", "train.save_steps=2", "train.eval_strategy=never",
        "eval.generate_at_end=false"]))
    adapter = run_dir / "run"
    assert _json(adapter / "adapter_config.json")["base_model_name_or_path"] == str((run_dir / "base").resolve())

    monkeypatch.chdir(serve_dir)
    assert main(["merge", "--adapter", str(adapter), "--out", "merged", "--dtype", "fp32"]) == 0
    images = [_picture(serve_dir / f"photo{i}.png", size, i) for i, size in
              enumerate([(640, 480), (333, 500), (1024, 200)])]  # all above the trained max_pixels
    for image in images:
        capsys.readouterr()
        args = ["--image", str(image), "--prompt", "What color is the shape?", "--max-new-tokens", "6"]
        assert main(["infer", "--adapter", str(adapter), *args]) == 0
        with_adapter = capsys.readouterr().out
        assert main(["infer", "--model", "merged", *args]) == 0
        assert capsys.readouterr().out == with_adapter, image

    # The same grids everywhere: training, base+adapter, merged, the checkpoint, plain transformers.
    trained = load_model_and_processor(ModelConfig(name=str(run_dir / "base"), min_pixels=lo, max_pixels=hi),
                                       device="cpu").processor
    served = [load_model_and_processor(model_config_for(None, str(adapter), None, None), device="cpu").processor,
              load_model_and_processor(model_config_for("merged", None, None, None), device="cpu").processor]
    plain = [AutoImageProcessor.from_pretrained(folder) for folder in
             (adapter, serve_dir / "merged", adapter / "checkpoint-2")]
    for image in images:
        picture = Image.open(image).convert("RGB")
        grid = trained.process_images([picture])["image_grid_thw"]
        assert int(grid.prod()) // 4 <= hi // (28 * 28)
        for processor in served:
            assert torch.equal(processor.process_images([picture])["image_grid_thw"], grid)
        for processor in plain:
            assert torch.equal(processor(images=[picture], return_tensors="pt")["image_grid_thw"], grid)
