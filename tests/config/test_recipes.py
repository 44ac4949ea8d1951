import subprocess
import sys

import pytest

from mmlora.config.loading import load_recipe, recipe_from_dict
from mmlora.config.paths import resolve_data_path, shipped_recipes
from mmlora.config.schema import Recipe, field_docs
from mmlora.errors import MmloraError

REQUIRED = {"qwen2_vl_2b_lora_caption", "qwen2_vl_2b_lora_vqa", "tiny_caption", "tiny_vqa"}


def test_required_recipes_ship():
    assert REQUIRED <= {p.stem for p in shipped_recipes()}


@pytest.mark.parametrize("path", shipped_recipes(), ids=lambda p: p.stem)
def test_every_shipped_recipe_loads_and_validates(path):
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    if recipe.model.name.startswith("tiny/"):
        # offline recipes must point at data that ships with mmlora
        assert resolve_data_path(recipe.data.train).is_file()
        assert resolve_data_path(recipe.data.eval).is_file()
    else:
        assert recipe.model.dtype == "bfloat16"
        assert recipe.train.gradient_checkpointing
        assert recipe.model.max_pixels <= 1024 * 1024


def test_overrides_are_typed():
    recipe = load_recipe("tiny_vqa", ["train.epochs=3", "lora.r=4", "lora.projector=lora", "lora.targets=q_proj,v_proj"])
    assert recipe.train.epochs == 3.0 and isinstance(recipe.train.epochs, float)
    assert recipe.lora.r == 4
    assert recipe.lora.projector == "lora"
    assert recipe.lora.targets == ["q_proj", "v_proj"]


def test_exponent_floats_without_a_dot_are_numbers(tmp_path):
    # PyYAML (YAML 1.1) reads `2e-4` as the string "2e-4"; a recipe must still mean 0.0002.
    path = tmp_path / "r.yaml"
    path.write_text("data: {train: x.jsonl}\ntrain: {learning_rate: 2e-4}\n")
    recipe = load_recipe(path, ["lora.dropout=5e-2"])
    assert recipe.train.learning_rate == 2e-4 and recipe.lora.dropout == 0.05
    with pytest.raises(MmloraError, match=r"train\.learning_rate: got '2e-4x', expected a number"):
        load_recipe(path, ["train.learning_rate=2e-4x"])


def test_unknown_key_names_key_and_suggestion():
    with pytest.raises(MmloraError, match=r"train\.epoch'.*Did you mean 'train\.epochs'"):
        recipe_from_dict({"data": {"train": "x"}, "train": {"epoch": 3}})
    with pytest.raises(MmloraError, match=r"'lora_r'"):
        recipe_from_dict({"data": {"train": "x"}, "lora_r": 3})


def test_wrong_type_or_value_names_field_and_allowed():
    with pytest.raises(MmloraError, match=r"lora\.r: got 'big', expected an integer"):
        recipe_from_dict({"data": {"train": "x"}, "lora": {"r": "big"}})
    with pytest.raises(MmloraError, match=r"lora\.projector: got 'half', expected one of 'frozen', 'lora', 'full'"):
        recipe_from_dict({"data": {"train": "x"}, "lora": {"projector": "half"}})
    with pytest.raises(MmloraError, match=r"model\.min_pixels .* larger than model\.max_pixels"):
        recipe_from_dict({"data": {"train": "x"}, "model": {"min_pixels": 10_000, "max_pixels": 100}})
    with pytest.raises(MmloraError, match=r"train\.batch_size: got 0"):
        recipe_from_dict({"data": {"train": "x"}, "train": {"batch_size": 0}})


UNION_FIELD_WORDS = {
    "model.revision": "a string or null",
    "lora.targets": "a string or a list of strings",
    "lora.loraplus_lr_ratio": "a number or null",
    "lora.projector_lr": "a number or null",
    "lora.vision_lr": "a number or null",
    "data.train": "a path or hub id, a mapping, or a list of these",
    "data.eval": "a path or hub id, a mapping, a list of these, or null",
    "data.image_root": "a string or null",
    "data.system_prompt": "a string or null",
    "train.save_total_limit": "an integer or null",
    "train.vision_cache_dir": "a string or null",
    "train.vision_cache_memory": "an integer or a string",
    "eval.limit": "an integer or null",
    "eval.best_metric": "a string or null",
}


def union_fields(cls=Recipe, prefix=""):
    import dataclasses
    import types
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from union_fields(hints[f.name], f"{prefix}{f.name}.")
        elif typing.get_origin(hints[f.name]) in (typing.Union, types.UnionType):
            yield f"{prefix}{f.name}"


def test_every_union_field_says_what_it_takes_in_words():
    """A value of the wrong kind is named with the kinds the field takes, as a sentence (was e.g.
    "a string or a list of a string or a mapping or a mapping"), in a file and in an override."""
    assert sorted(union_fields()) == sorted(UNION_FIELD_WORDS)  # a new union field: add its words here
    for name, words in UNION_FIELD_WORDS.items():
        section, key = name.split(".")
        with pytest.raises(MmloraError) as in_file:
            recipe_from_dict({"data": {"train": "x"}, section: {key: [[True]]}}, source="r.yaml")
        assert str(in_file.value) == f"r.yaml: {name}: got [[True]], expected {words}."
        with pytest.raises(MmloraError) as in_override:
            load_recipe("tiny_vqa", [f"{name}=[[true]]"])
        assert str(in_override.value) == f"override '{name}=[[true]]': {name}: got [[True]], expected {words}."
    with pytest.raises(MmloraError) as listed:  # a plain list names its element type in the plural
        load_recipe("tiny_vqa", ["data.column_map=5"])
    assert str(listed.value) == "override 'data.column_map=5': data.column_map: got 5, expected a list of strings."


def test_every_field_is_documented():
    for name, help_text, _default in field_docs():
        assert len(help_text) > 10, f"{name} has no documentation"


def test_cli_misspelt_key_exits_nonzero_with_suggestion():
    result = subprocess.run(
        [sys.executable, "-m", "mmlora", "train", "tiny_vqa", "train.learnin_rate=0.1"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "train.learnin_rate" in result.stderr and "learning_rate" in result.stderr
    assert "Traceback" not in result.stderr


def test_recipes_cp_copies_a_shipped_recipe(tmp_path):
    from mmlora.cli import main

    assert main(["recipes", "cp", "tiny_vqa", str(tmp_path / "mine.yaml")]) == 0
    copied = load_recipe(tmp_path / "mine.yaml", ["train.epochs=1"])
    assert copied.train.epochs == 1.0 and copied.task == "vqa"
    assert main(["recipes", "cp", "tiny_vqa", str(tmp_path / "mine.yaml")]) == 2  # never overwrite
