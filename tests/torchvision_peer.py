"""Test-only: make torchvision importable on the CPU-only torch of the test environment.

Why: the real Qwen-VL processors (`Qwen2VLProcessor`, `Qwen2_5_VLProcessor`, `Qwen3VLProcessor`)
cannot be built without torchvision (their video processors need it), and they are the reference
mmlora's own image-text processing is compared with token for token. torchvision 0.28.0 is the
release for torch 2.13, but its PyPI wheel's compiled ops do not load on the CPU torch build, and
`import torchvision` then fails registering fake kernels for operators that do not exist
("operator torchvision::nms does not exist"). Defining the operators' schemas with torch.library
first lets the import succeed; the Python image transforms the processors use never call the
compiled ops (detection ops such as nms would fail if called: no kernel is registered).

Installed by `make test` with `pip install --no-deps --target .venv/torchvision-peer -r
requirements-test.txt` (see `peer_dir`).
`enable()` must run before anything imports mmlora or transformers: conftest.py calls it when
MMLORA_TEST_TORCHVISION=1; tests/models/test_torchvision_peers.py starts such a session.
"""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

# torchvision's operator schemas (torchvision/csrc/ops/*.cpp, TORCH_LIBRARY_FRAGMENT).
TORCHVISION_OP_SCHEMAS = (
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

_library = None  # kept alive: dropping the Library object would unregister the schemas


def peer_dir() -> Path:
    """Where `make test` installs torchvision: a folder of the venv that is not on sys.path, so
    the venv itself (the demo, the bench baseline, plain transformers scripts) never sees a
    torchvision that cannot import."""
    return Path(sys.prefix) / "torchvision-peer"


def installed() -> bool:
    """torchvision's files are installed: in the peer folder, or in the environment itself
    (read from its metadata: mmlora hides an unimportable torchvision from find_spec)."""
    if (peer_dir() / "torchvision").is_dir():
        return True
    try:
        importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _ops_defined() -> bool:
    import torch

    try:
        torch.ops.torchvision.nms  # noqa: B018 - raises when the operator does not exist
    except (AttributeError, RuntimeError):
        return False
    return True


def enable() -> bool:
    """Define torchvision's operator schemas where its compiled ops did not, then import it.
    False when torchvision is not installed."""
    global _library
    if not installed():
        return False
    if (peer_dir() / "torchvision").is_dir() and str(peer_dir()) not in sys.path:
        sys.path.insert(0, str(peer_dir()))
    import torch

    if not _ops_defined():
        _library = torch.library.Library("torchvision", "DEF")
        for schema in TORCHVISION_OP_SCHEMAS:
            _library.define(schema)
    import torchvision  # noqa: F401

    return True


# Scripts run in a fresh interpreter with or without torchvision: transformers decides once, at
# import, which backends exist, so one process cannot test both paths.
_WITH = """\
import sys
sys.path.insert(0, {tests_dir!r})
import torchvision_peer
torchvision_peer.enable()
"""
# `sys.modules["torchvision"] = None` makes find_spec (what transformers asks) report it absent.
_WITHOUT = """\
import sys
sys.modules["torchvision"] = None
"""


def run_script(script, args: list[str], torchvision: bool, timeout: int = 600) -> str:
    """Run `script` with `args` in a fresh interpreter, with or without torchvision; returns its
    stdout (the calling test fails with the script's stderr when it exits non-zero, and is
    skipped when torchvision is wanted but not installed)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import pytest

    if torchvision and not installed():
        pytest.skip("torchvision is not installed (make test installs it: requirements-test.txt)")
    tests_dir = str(Path(__file__).resolve().parent)
    preamble = _WITH.format(tests_dir=tests_dir) if torchvision else _WITHOUT
    code = (preamble + f"sys.argv = {[str(script), *args]!r}\n"
            + f"exec(compile(open({str(script)!r}).read(), {str(script)!r}, 'exec'))\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                            timeout=timeout, cwd=Path(tests_dir).parent)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout
