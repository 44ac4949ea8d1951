"""Is a checkpoint whole enough to resume exactly? Read every file resume needs, before resuming.

The completion marker says a checkpoint was written completely; it cannot say the files are
still intact (a disk filled up later, a copy was cut short, a file was deleted). The HF Trainer
would then fail deep inside `train()` with a traceback (truncated adapter or optimizer, no
trainer_state.json), or resume without the file and silently train a different run (no
rng_state: another data order and dropout; no optimizer/scheduler state: fresh AdamW moments).
So every file is opened here, the way resume opens it: safetensors headers, and
`torch.load(weights_only=True)` (never a full unpickle) for the optimizer, scheduler and RNG.
"""

from __future__ import annotations

import json
from pathlib import Path

TRAINER_STATE = "trainer_state.json"
ADAPTER = "adapter_model.safetensors"
SCHEDULER = "scheduler.pt"
OPTIMIZER = "optimizer.pt"
# accelerate's FSDP FULL_STATE_DICT checkpoint files (save_fsdp_model/save_fsdp_optimizer); resume
# reads both with torch.load(weights_only=True). SHARDED_STATE_DICT writes DCP folders instead.
FSDP_FULL = ("pytorch_model_fsdp.bin", "optimizer.bin")


def rng_files(world_size: int) -> list[str]:
    """The RNG files the HF Trainer reads when resuming with `world_size` processes."""
    return ["rng_state.pth"] if world_size <= 1 else [f"rng_state_{i}.pth" for i in range(world_size)]


def _read_trainer_state(path: Path) -> str | None:
    try:
        state = json.loads(path.read_text())
    except OSError as err:
        return f"{path.name} cannot be read ({err.strerror or err})"
    except ValueError:
        return f"{path.name} is not valid JSON"
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        return f"{path.name} has no global_step"
    return None


def _read_safetensors(path: Path) -> str | None:
    from safetensors import safe_open

    try:
        # The header lists every tensor's byte range: safetensors refuses a file that does not
        # cover them all, so a truncated adapter is found without reading the weights.
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except Exception as err:  # SafetensorError, OSError: any unreadable file is reported
        return f"{path.name} is damaged ({err})"
    return None


def _read_torch(path: Path) -> str | None:
    import torch
    from transformers.trainer_pt_utils import safe_globals

    try:
        # The Trainer's own allowlist (numpy arrays and dtypes, for the RNG state): read exactly
        # as resume reads it, still weights_only.
        with safe_globals():
            torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, unpickling refused, I/O error
        return f"{path.name} is damaged ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
    return None


def _sharded_optimizer(checkpoint: Path) -> bool:
    """DeepSpeed (global_step*/) and FSDP (optimizer_0/, optimizer.bin) keep their own layout."""
    return any(checkpoint.glob("global_step*")) or any(checkpoint.glob("optimizer_*")) or (
        checkpoint / "optimizer.bin").is_file()


def checkpoint_problem(checkpoint: Path, world_size: int = 1) -> str | None:
    """Why `checkpoint` cannot be resumed exactly (the first problem found), or None if it can."""
    checkpoint = Path(checkpoint)
    required = [TRAINER_STATE, ADAPTER, *rng_files(world_size)]
    sharded = _sharded_optimizer(checkpoint)
    fsdp_full = [*FSDP_FULL, SCHEDULER] if (checkpoint / FSDP_FULL[1]).is_file() else []
    if not sharded:
        required += [OPTIMIZER, SCHEDULER]
    required += fsdp_full
    missing = [name for name in required if not (checkpoint / name).is_file()]
    if missing:
        others = sorted(p.name for p in checkpoint.glob("rng_state*.pth"))
        if others and set(missing) <= set(rng_files(world_size)):
            return (f"it was written by another number of processes ({', '.join(others)}; this run "
                    f"has {world_size}): resume with as many processes as wrote it")
        return f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing"
    problem = _read_trainer_state(checkpoint / TRAINER_STATE) or _read_safetensors(checkpoint / ADAPTER)
    if problem:
        return problem
    for name in [n for n in (OPTIMIZER, SCHEDULER) if not sharded] + fsdp_full + rng_files(world_size):
        problem = _read_torch(checkpoint / name)
        if problem:
            return problem
    return None
