"""Command-line checks that run before any heavy import: where overrides are on the line, and
GPU ids, applied before torch is imported. Each problem is one line (MmloraError), in well under a
second, instead of a traceback or a failure after torch and the model have loaded."""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from mmlora.errors import MmloraError

GPU_IDS = re.compile(r"(\d+|(GPU|MIG)-[\w/-]+)(,(\d+|(GPU|MIG)-[\w/-]+))*")
"""What CUDA_VISIBLE_DEVICES accepts: indices or device UUIDs, comma separated."""


def check_gpu_ids(gpu: str) -> None:
    """`--gpu` must be what CUDA_VISIBLE_DEVICES understands, or every GPU would silently vanish."""
    if not GPU_IDS.fullmatch(gpu):
        raise MmloraError(f"--gpu {gpu!r}: expected GPU indices separated by commas (e.g. 0 or 0,1) or "
                          "GPU UUIDs (GPU-..., MIG-...), as `nvidia-smi -L` lists them.")


def apply_gpu_selection(gpu: str | None) -> None:
    """`--gpu 0,1` -> CUDA_VISIBLE_DEVICES, before torch is imported; without it, keep the env."""
    if gpu is None:
        return
    check_gpu_ids(gpu)
    if "torch" in sys.modules:
        raise MmloraError("--gpu must be applied before torch is imported (internal ordering bug).")
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu


def collect_overrides(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line, accepting `section.key=value` overrides anywhere in it.

    argparse takes positionals only in one run, so an override after an option
    (`train R --output-dir X a.b=1`) comes back unrecognised: it is moved to the command's
    overrides here. `--resume` takes an optional value; one that reads as an override is an
    override, and the resume means `latest`. `args.overrides` is then the full list, in the
    order typed (the printed resume command repeats it).
    """
    from mmlora.config.overrides import looks_like_override

    args, extra = parser.parse_known_args(argv)
    target = "items" if getattr(args, "command", None) == "data" else "overrides"
    if hasattr(args, target):
        resume = getattr(args, "resume", None)
        if resume and looks_like_override(resume) and not Path(resume).exists():
            extra.insert(0, resume)
            args.resume = "latest"
        moved = [token for token in extra if looks_like_override(token)]
        setattr(args, target, list(getattr(args, target) or []) + moved)
        extra = [token for token in extra if token not in moved]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args
