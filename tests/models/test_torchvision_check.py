"""An installed torchvision that fails to import counts as absent (mmlora/models/torchvision_check.py).

transformers trusts find_spec and would fail every AutoImageProcessor call on such an install
("Could not import module 'AutoImageProcessor'"); mmlora hides it with one log line instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mmlora.models.tiny import tiny_dir

# The failure of torchvision 0.28.0 on a CPU-only torch 2.13, reproduced by a stand-in package.
BROKEN_TORCHVISION = 'raise RuntimeError("operator torchvision::nms does not exist")\n'

SCRIPT = """
import sys
import mmlora.cli
# Trying torchvision imports torch: not at import time, or --gpu would come too late.
print("torch" in sys.modules)
from transformers import AutoImageProcessor
from mmlora.models.families import QWEN2_VL
from mmlora.models.processor import load_processor
print(type(AutoImageProcessor.from_pretrained({tiny!r})).__name__)
processor = load_processor({tiny!r}, QWEN2_VL, 3136, 50176)
print(processor.full_processor, type(processor.image_processor).__name__)
"""


def test_unimportable_torchvision_is_treated_as_absent(tmp_path):
    (tmp_path / "torchvision").mkdir()
    (tmp_path / "torchvision" / "__init__.py").write_text(BROKEN_TORCHVISION)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path[1:]])}
    script = SCRIPT.format(tiny=str(tiny_dir("tiny/qwen2-vl")))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[2], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["False", "Qwen2VLImageProcessorPil", "None", "Qwen2VLImageProcessorPil"]
    mentions = [line for line in result.stderr.splitlines() if "torchvision" in line]
    assert mentions == [
        "mmlora: torchvision is installed but does not import (operator torchvision::nms does not exist); "
        "going on without it (PIL image processing). Install the torchvision release built for your torch "
        "to use it."
    ]
