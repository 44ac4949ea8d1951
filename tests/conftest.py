"""Shared fixtures: the built-in tiny model and the shipped synthetic data (all offline)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

# No test may reach a model hub: fail fast instead of retrying a network that is not there.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A process of a test that dies on a fatal signal (a gloo rank aborting in C++, SIGABRT) prints
# every thread's Python stack first: a rare rank abort in the 2-process tests left no trace.
os.environ.setdefault("PYTHONFAULTHANDLER", "1")
# Cached vision features (train.vision_cache) go to a folder of this test session, not ~/.cache.
if "MMLORA_VISION_CACHE_DIR" not in os.environ:
    os.environ["MMLORA_VISION_CACHE_DIR"] = tempfile.mkdtemp(prefix="mmlora-vision-cache-")
    atexit.register(shutil.rmtree, os.environ["MMLORA_VISION_CACHE_DIR"], True)
# Pre-scan results (mmlora/data/arrowscan.py) in a folder of this session, not the user's cache.
if "MMLORA_SCAN_CACHE" not in os.environ:
    os.environ["MMLORA_SCAN_CACHE"] = tempfile.mkdtemp(prefix="mmlora-test-scan-")
    atexit.register(shutil.rmtree, os.environ["MMLORA_SCAN_CACHE"], True)

# The torchvision session (tests/models/test_torchvision_peers.py starts one): torchvision made
# importable before mmlora or transformers is imported, so both take the torchvision path.
if os.environ.get("MMLORA_TEST_TORCHVISION") == "1":
    from tests import torchvision_peer

    if not torchvision_peer.enable():
        raise RuntimeError("MMLORA_TEST_TORCHVISION=1 but torchvision is not installed (make test installs it)")


@pytest.fixture
def tiny():
    """A freshly built tiny Qwen2-VL with its processor (fresh: LoRA modifies models in place)."""
    from mmlora.config.schema import ModelConfig
    from mmlora.models.loading import load_model_and_processor

    return load_model_and_processor(ModelConfig(name="tiny/qwen2-vl", max_pixels=224 * 224), device="cpu")


@pytest.fixture(scope="session")
def demo_image():
    from mmlora.config.paths import assets_dir

    return assets_dir() / "demo" / "images" / "red_circle_white_112x112.png"


@pytest.fixture
def folder(tmp_path):
    """A data folder holding one small image, a.png."""
    from PIL import Image

    Image.new("RGB", (30, 30), "red").save(tmp_path / "a.png")
    return tmp_path


@pytest.fixture(scope="module")
def processor():
    """The tiny Qwen2-VL's data processor (no weights), as `mmlora data check` builds it."""
    from mmlora.config.schema import ModelConfig
    from mmlora.data.scan import load_data_processor

    return load_data_processor(ModelConfig(name="tiny/qwen2-vl", max_pixels=448 * 448))
