"""vLLM readiness of real adapter folders (written as `mmlora train` writes them): which LoRA
modules sit in the language model, the vision tower and the projector, and what vLLM does."""

from __future__ import annotations

import json

from mmlora.config.loading import load_recipe
from mmlora.inference.vllm_check import check_adapter
from mmlora.models.lora import apply_lora
from mmlora.models.loading import load_model_and_processor
from mmlora.training.train import save_outputs


def write_adapter(out, recipe_name: str, *overrides: str):
    """An untrained adapter folder, saved exactly as `mmlora train` saves one."""
    recipe = load_recipe(recipe_name, [f"train.output_dir={out}", *overrides])
    loaded = load_model_and_processor(recipe.model, device="cpu")
    save_outputs(out, apply_lora(loaded.model, loaded.family, recipe.lora), loaded, recipe, [])
    return json.loads((out / "adapted_modules.json").read_text())


def test_language_only_adapter_loads_as_is(tmp_path):
    adapted = write_adapter(tmp_path, "tiny_vqa", "lora.r=8", "lora.projector=frozen")
    report = check_adapter(tmp_path)
    assert set(report.language) == set(adapted["lora"]["language"]) and not report.tower and not report.connector
    assert report.loads_as_is and report.max_rank == 8
    assert report.serve_flags() == ["--enable-lora", "--max-lora-rank", "8"]
    assert report.lines()[1] == "vLLM: loads as is (language-model LoRA only)."


def test_tower_and_projector_lora_need_the_tower_connector_flag(tmp_path):
    adapted = write_adapter(tmp_path, "tiny_vqa", "lora.vision=lora", "lora.projector=lora", "lora.r=20")
    report = check_adapter(tmp_path)
    assert set(report.tower) == set(adapted["lora"]["vision"])
    assert set(report.connector) == set(adapted["lora"]["projector"])
    assert report.connector and all(m.startswith("model.visual.merger.") for m in report.connector)
    assert report.loads_as_is
    assert report.serve_flags() == ["--enable-lora", "--max-lora-rank", "32", "--enable-tower-connector-lora"]
    assert "only with --enable-tower-connector-lora (vllm#26674" in report.lines()[1]


def test_a_fully_trained_projector_or_dora_is_refused(tmp_path):
    write_adapter(tmp_path / "full", "tiny_vqa", "lora.projector=full")
    report = check_adapter(tmp_path / "full")
    assert report.refused and not report.loads_as_is and report.serve_flags() == []
    assert {t.rsplit(".", 1)[0] for t in report.not_lora} == {"model.visual.merger.ln_q", "model.visual.merger.mlp.0",
                                                             "model.visual.merger.mlp.2"}
    assert report.lines()[1].startswith("vLLM: refuses this adapter: it holds 6 tensor(s) that are not LoRA factors")
    write_adapter(tmp_path / "dora", "tiny_vqa", "lora.use_dora=true")
    assert "DoRA, which vLLM does not load" in check_adapter(tmp_path / "dora").lines()[1]


def test_vision_lora_on_a_model_without_tower_support_would_be_dropped(tmp_path):
    write_adapter(tmp_path, "tiny_llava_next_vqa", "lora.vision=lora", "lora.projector=frozen")
    report = check_adapter(tmp_path)
    assert report.family == "llava_next" and report.tower and not report.loads_as_is
    assert report.lines()[1].startswith(f"vLLM: would drop the {len(report.tower)} vision tower/projector LoRA")
