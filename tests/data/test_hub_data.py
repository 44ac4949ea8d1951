"""Hub datasets (`hf:ORG/NAME[:CONFIG][@SPLIT]`) through the real `datasets.load_dataset`, offline:
a folder laid out as a hub dataset repository (Parquet shards under data/, README.md whose YAML
`configs:` names them, images embedded as the `Image` feature), which load_dataset resolves by
its id before it asks the hub."""

import io
import subprocess
import sys

import datasets
import pytest
from PIL import Image

from mmlora.config.loading import recipe_from_dict
from mmlora.data.loading import load_samples
from mmlora.errors import MmloraError

README = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*
  - split: test
    path: data/test-*
- config_name: docs
  data_files:
  - split: train
    path: docs/train-*
---
# a dataset card
"""


def png(color: str, size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


def write_split(path, colors: list[str]) -> None:
    features = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                                  "answer": datasets.Value("string")})
    rows = {"image": [{"bytes": png(c), "path": None} for c in colors],
            "question": ["Which color?"] * len(colors), "answer": colors}
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))


@pytest.fixture
def hub_repo(tmp_path, monkeypatch):
    """./ORG/NAME as the hub lays out a dataset repository; the datasets cache inside tmp_path."""
    repo = tmp_path / "ORG" / "NAME"
    write_split(repo / "data" / "train-00000-of-00001.parquet", ["red", "blue", "green"])
    write_split(repo / "data" / "test-00000-of-00001.parquet", ["white"])
    write_split(repo / "docs" / "train-00000-of-00001.parquet", ["black", "yellow"])
    (repo / "README.md").write_text(README)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    return repo


def recipe(train):
    return recipe_from_dict({"model": {"name": "tiny/qwen2-vl"}, "data": {"train": train}})


def answers(samples):
    return [s.messages[-1]["content"][0]["text"] for s in samples]


def test_hub_id_reads_the_repository_through_load_dataset(hub_repo):
    r = recipe("hf:ORG/NAME")
    samples = load_samples(r.data.train, r.data)
    assert answers(samples) == ["red", "blue", "green"]
    # the Image feature's embedded bytes are the image, untouched
    assert samples[0].images == [png("red")]
    assert samples[2].source == "hf:ORG/NAME@train row 3"


@pytest.mark.parametrize("train", ["hf:ORG/NAME:docs", "hf:ORG/NAME:docs@train",
                                   {"path": "ORG/NAME", "name": "docs", "split": "train"}])
def test_config_and_split(hub_repo, train):
    r = recipe(train)
    assert answers(load_samples(r.data.train, r.data)) == ["black", "yellow"]


def test_split_of_the_default_config(hub_repo):
    r = recipe("hf:ORG/NAME@test")
    assert answers(load_samples(r.data.train, r.data)) == ["white"]


def test_unknown_split_names_the_splits_there_are(hub_repo):
    r = recipe("hf:ORG/NAME@validation")
    with pytest.raises(MmloraError, match=r"^data.train: datasets.load_dataset\('ORG/NAME', split='validation'\) "
                                          r"refused: Unknown split \"validation\". Should be one of \['train', 'test'\]"):
        load_samples(r.data.train, r.data, where="data.train")


def test_unreachable_hub_id_says_what_was_tried(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    r = recipe("hf:HuggingFaceM4/ChartQA")
    with pytest.raises(MmloraError) as err:
        load_samples(r.data.train, r.data, where="data.train")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("data.train: hub dataset hf:HuggingFaceM4/ChartQA@train is offline")
    assert "tried datasets.load_dataset('HuggingFaceM4/ChartQA', split='train')" in message
    assert "hf download --repo-type dataset HuggingFaceM4/ChartQA" in message


def test_bare_hub_id_on_the_command_line_says_write_hf(tmp_path):
    """The report of issue #15: `data.train=HuggingFaceM4/ChartQA` said only "does not exist"."""
    result = subprocess.run([sys.executable, "-m", "mmlora", "data", "check", "tiny_vqa",
                             "data.train=HuggingFaceM4/ChartQA"], capture_output=True, text=True, cwd=tmp_path,
                            timeout=300)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "mmlora: error: data.train: 'HuggingFaceM4/ChartQA' does not exist here. For the hub dataset of that "
        "name write hf:HuggingFaceM4/ChartQA (optionally :CONFIG and @SPLIT); for a local file or folder, "
        "check the path.")
