"""Run a test script with or without torchvision, whatever this environment has installed.

LOCAL COPY for the `contract` branch: engineer `bounds` builds the shared helper
tests/torchvision_peer.py; the two are to be unified when the branches merge.

torchvision 0.28.0 (the release for torch 2.13) imports on the CPU-only torch here once its
custom-op schemas (`torchvision::nms`, `roi_align`, ...) are defined with `torch.library`;
it is installed `--no-deps`, either into the venv or into `.venv/torchvision-peer`
(`pip install --no-deps --target .venv/torchvision-peer torchvision==0.28.0`). Each mode runs in
its own interpreter because transformers decides once, at import, which backends exist:
- with: the schemas are defined, then torchvision is imported (the test is skipped where
  torchvision is not installed);
- without: `sys.modules["torchvision"] = None`, so `importlib.util.find_spec` (what
  transformers asks) says it is absent and `import torchvision` fails.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PEER_DIR = REPO / ".venv" / "torchvision-peer"

TORCHVISION_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "int sampling_ratio, bool aligned) -> Tensor",
    "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, "
    "int sampling_ratio, bool aligned) -> Tensor",
    "roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width) "
    "-> (Tensor, Tensor)",
    "_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width) -> Tensor",
    "ps_roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "int sampling_ratio) -> (Tensor, Tensor)",
    "_ps_roi_align_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, "
    "SymInt pooled_height, SymInt pooled_width, int sampling_ratio, SymInt batch_size, SymInt channels, "
    "SymInt height, SymInt width) -> Tensor",
    "ps_roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width) "
    "-> (Tensor, Tensor)",
    "_ps_roi_pool_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, "
    "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, "
    "SymInt width) -> Tensor",
    "deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, SymInt stride_h, "
    "SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, SymInt dilation_w, SymInt groups, "
    "SymInt offset_groups, bool use_mask) -> Tensor",
    "_deform_conv2d_backward(Tensor grad, Tensor input, Tensor weight, Tensor offset, Tensor mask, "
    "Tensor bias, SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, "
    "SymInt dilation_w, SymInt groups, SymInt offset_groups, bool use_mask) -> (Tensor, Tensor, Tensor, "
    "Tensor, Tensor)",
)

_WITH = """\
import sys
sys.path.insert(0, {peer!r})
import torch
_lib = torch.library.Library("torchvision", "DEF")
for _schema in {schemas!r}:
    _lib.define(_schema)
import torchvision
"""
_WITHOUT = """\
import sys
sys.modules["torchvision"] = None
"""


def torchvision_installed() -> bool:
    return importlib.util.find_spec("torchvision") is not None or (PEER_DIR / "torchvision").is_dir()


def run_script(script: Path, args: list[str], torchvision: bool, timeout: int = 600) -> str:
    """Run `script` with `args` in a fresh interpreter, with or without torchvision; returns its
    stdout (the test fails with the script's stderr when it exits non-zero)."""
    if torchvision and not torchvision_installed():
        pytest.skip("torchvision is not installed (pip install --no-deps torchvision==0.28.0)")
    preamble = _WITH.format(peer=str(PEER_DIR), schemas=TORCHVISION_SCHEMAS) if torchvision else _WITHOUT
    code = preamble + f"sys.argv = {[str(script), *args]!r}\n" + f"exec(compile(open({str(script)!r}).read(), {str(script)!r}, 'exec'))\n"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                            timeout=timeout, cwd=REPO)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout
