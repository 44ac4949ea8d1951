"""Checkpoints that appear whole or not at all, and resume that refuses a changed recipe.

The HF Trainer writes `checkpoint-N/` in place: a crash while saving leaves a half-written
folder that `get_last_checkpoint` would pick. mmlora's Trainer writes each checkpoint under
`<output_dir>/.staging/`, adds the resolved recipe, the processor and a completion marker, and
only then renames it into place (`os.replace` is atomic within one filesystem).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

from mmlora.config.loading import save_recipe
from mmlora.config.schema import Recipe
from mmlora.errors import MmloraError
from mmlora.models.model_card import write_snapshot_card

STAGING = ".staging"
MARKER = "mmlora_checkpoint.json"
"""Written last into a staged checkpoint: its presence means the checkpoint is complete."""
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")

START_LEFTOVERS = {"data_report.json"}
"""Files written before training starts: a run that failed there leaves only these."""

RESUME_MAY_DIFFER = {
    "train.output_dir", "train.logging_steps", "train.save_steps", "train.save_total_limit",
    "train.num_workers", "train.max_bad_steps", "train.report_to", "train.eval_strategy",
    "train.eval_steps", "data.eval", "data.num_proc", "data.scan_cache",
    # The feature cache changes speed, not results (mmlora/models/vision_cache.py).
    "train.vision_cache", "train.vision_cache_dir", "train.vision_cache_memory",
}
"""Recipe fields a resumed run may change; any other difference would change the result."""

RESUME_MAY_EXTEND = {"train.max_steps", "train.epochs"}
"""The run's length may change on resume (e.g. extend a finished run); the learning-rate
schedule is then recomputed for the new length (see length_change_note)."""


def replace_folder(staged: Path, final: Path, old: Path) -> None:
    """Put the finished folder `staged` in place of `final` with two renames (`old` holds the
    previous one in between): at every moment `final` is all old or all new, never a mix."""
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(staged, final)
    shutil.rmtree(old, ignore_errors=True)


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest first (by step)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _CHECKPOINT.match(child.name)
        if match and child.is_dir() and (child / MARKER).is_file():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def find_checkpoint(output_dir: str | Path, which: str, world_size: int = 1) -> Path:
    """`latest` -> the newest complete and intact checkpoint of `output_dir` (a damaged newer one
    is skipped, with a message); else `which` is a checkpoint dir, which must be intact.

    Intact: every file resume reads is there and readable (mmlora/training/checkpoint_check.py), so a
    resumed run is never silently different from an uninterrupted one."""
    from mmlora.training.checkpoint_check import checkpoint_problem

    if which != "latest":
        path = Path(which)
        if not (path / MARKER).is_file():
            raise MmloraError(f"'{which}' is not a complete mmlora checkpoint (no {MARKER}).")
        problem = checkpoint_problem(path, world_size)
        if problem:
            raise MmloraError(f"Cannot resume from '{which}': {problem}. Resume from another "
                              "checkpoint (--resume DIR) or start the run again.")
        return path
    checkpoints = complete_checkpoints(output_dir)
    if not checkpoints:
        raise MmloraError(
            f"No complete checkpoint in '{output_dir}' to resume from. Start the run without "
            "--resume (add --overwrite to reuse the directory)."
        )
    damaged = []
    for path in reversed(checkpoints):
        problem = checkpoint_problem(path, world_size)
        if problem is None:
            if damaged:
                print(f"mmlora: skipping damaged {'; '.join(damaged)}; resuming from {path.name}, "
                      "the newest intact checkpoint.", file=sys.stderr)
            return path
        damaged.append(f"{path.name} ({problem})")
    raise MmloraError(
        f"No intact checkpoint in '{output_dir}' to resume from: {'; '.join(damaged)}. Start the "
        "run again with --overwrite."
    )


def finalize_checkpoint(staged: Path, output_dir: Path, recipe: Recipe, processor, step: int) -> Path:
    """Add recipe, processor and marker to a staged checkpoint, then rename it into place."""
    save_recipe(recipe, staged / "recipe.yaml")
    if processor is not None:
        processor.save_pretrained(staged)
    target = output_dir / staged.name
    # mmlora's card (step, metrics so far) in place of PEFT's blank template: a checkpoint copied
    # to the hub says what it is (mmlora/models/model_card.py).
    write_snapshot_card(staged, target, output_dir, recipe.model.name)
    (staged / MARKER).write_text(json.dumps({"step": step}) + "\n")
    if target.exists():  # the same step saved twice (e.g. an interrupt right at a save step)
        shutil.rmtree(target)
    os.replace(staged, target)
    return target


def rotate(output_dir: Path, keep_last: int | None, keep: Path | None = None) -> None:
    """Delete all but the newest `keep_last` complete checkpoints (never `keep`, e.g. the best)."""
    if not keep_last or keep_last <= 0:
        return
    checkpoints = complete_checkpoints(output_dir)
    for old in checkpoints[:-keep_last]:
        if keep is None or old.resolve() != Path(keep).resolve():
            shutil.rmtree(old, ignore_errors=True)


def clear_staging(output_dir: Path) -> None:
    """Remove leftovers of a save that was killed midway (they were never complete)."""
    shutil.rmtree(Path(output_dir) / STAGING, ignore_errors=True)


def _flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_resume_compatible(checkpoint: Path, recipe: Recipe) -> None:
    """Refuse to resume when the recipe changed anything that would change the result."""
    import yaml

    saved_path = checkpoint / "recipe.yaml"
    saved = _flatten(yaml.safe_load(saved_path.read_text()) or {})
    current = _flatten(recipe.to_dict())
    differing = sorted(
        key for key in set(saved) | set(current)
        # eval.* only changes what is measured, never what is trained
        if key not in RESUME_MAY_DIFFER | RESUME_MAY_EXTEND and not key.startswith("eval.")
        and saved.get(key) != current.get(key)
    )
    if differing:
        details = "; ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in differing)
        raise MmloraError(
            f"Cannot resume from {checkpoint}: the recipe changed fields that change the result "
            f"({details}). Resume with the checkpoint's recipe ({saved_path}) or start a new run."
        )
    changed = {k: (saved.get(k), current.get(k)) for k in sorted(RESUME_MAY_EXTEND) if saved.get(k) != current.get(k)}
    if changed:
        print(length_change_note(changed, recipe.train.lr_scheduler), file=sys.stderr)


def length_change_note(changed: dict, scheduler: str) -> str:
    """Say what a changed run length does to the learning-rate schedule (it is not silent)."""
    details = ", ".join(f"{key} {old} -> {new}" for key, (old, new) in changed.items())
    return (
        f"mmlora: resuming with {details}: the {scheduler} learning-rate schedule (warmup and "
        "decay) is recomputed for the new length and continues at the step reached, so the "
        "learning rate follows the new schedule from there on (after a finished decay it rises "
        "again to the new schedule's value at that step)."
    )


def prepare_output_dir(output_dir: Path, resume: str | None, overwrite: bool) -> None:
    """Never silently overwrite a previous run: refuse, or with --overwrite clear its checkpoints."""
    clear_staging(output_dir)
    if resume or not output_dir.exists():
        return
    # What a start that failed before training leaves (the pre-scan's report) holds no trained
    # work: a rerun overwrites it instead of asking for --overwrite.
    if all(child.name in START_LEFTOVERS for child in output_dir.iterdir()):
        return
    if not overwrite:
        raise MmloraError(
            f"Output directory '{output_dir}' already holds files. Use --resume latest to continue "
            "that run, --overwrite to replace it, or another train.output_dir."
        )
    # Only mmlora's own checkpoints are removed: everything else is overwritten file by file,
    # so a mistaken output_dir (e.g. ".") never loses unrelated files.
    for old in output_dir.glob("checkpoint-*"):
        if old.is_dir():
            shutil.rmtree(old)


def estimate_checkpoint_bytes(model) -> int:
    """One checkpoint: trained weights + AdamW's two moments (3x the trainable bytes), plus
    16 MiB for the processor files, RNG and trainer state."""
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return 3 * trainable + 16 * 2**20


def check_free_disk(output_dir: Path, needed_bytes: int) -> None:
    """Fail before training, with numbers, when the checkpoints cannot fit on disk."""
    probe = output_dir
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed_bytes:
        raise MmloraError(
            f"Not enough disk space in '{output_dir}': checkpoints need about "
            f"{needed_bytes / 2**20:.0f} MiB, {free / 2**20:.0f} MiB free. Free space, lower "
            "train.save_total_limit, or choose another train.output_dir."
        )
