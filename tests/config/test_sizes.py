"""train.vision_cache_memory and other byte sizes: units as people write them, clear refusals."""

import pytest

from mmlora.config.loading import load_recipe
from mmlora.config.sizes import parse_bytes
from mmlora.errors import MmloraError


@pytest.mark.parametrize("text, expected", [("4GiB", 4 * 2**30), ("512MiB", 512 * 2**20), ("1.5GB", 1_500_000_000),
                                            ("0", 0), (0, 0), (2048, 2048), (" 3 kib ", 3072)])
def test_sizes_in_bytes(text, expected):
    assert parse_bytes(text, "f") == expected


@pytest.mark.parametrize("text", ["lots", "4 parsecs", "-1", -5, "GiB"])
def test_bad_sizes_name_the_field(text):
    with pytest.raises(MmloraError, match="train.vision_cache_memory: got .* expected a size such as 4GiB"):
        load_recipe("tiny_vqa", [f"train.vision_cache_memory={text}"])


def test_unquoted_off_in_yaml_means_off(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data:\n  train: x.jsonl\ntrain:\n  vision_cache: off\n")
    assert load_recipe(recipe).train.vision_cache == "off"
