"""Which process this is, from the launcher's environment (torchrun, accelerate, deepspeed).

Read from RANK / WORLD_SIZE rather than accelerate's PartialState: before the Trainer has set
up the process group on a CPU-only machine, PartialState() reports a single process on every
rank, and every rank would then print and write.
"""

from __future__ import annotations

import os


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 (or a single process): the only one that prints summaries and writes files."""
    return rank() == 0
