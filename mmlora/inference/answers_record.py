"""What made an answers file: the record `mmlora infer --output preds.jsonl` keeps next to it
(`preds.jsonl.meta.json`), so that `--resume` does not mix answers of another model or other
settings into the file without saying so.

The record is a sidecar rather than a first line of the answers file: the answers file stays
plain JSON Lines, one answer per line, that pandas (`read_json(lines=True)`), `datasets` and
`jq` load as rows without a header row to skip.

It holds the base model, the adapter (its folder and a sha256 of adapter_model.safetensors,
so retrained weights in the same folder count as another adapter), the pixel bounds the images
are processed with, and the generation settings. The batch size is left out: greedy answers
are the same batched or alone (tests/inference/test_engine.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from mmlora.errors import MmloraError
from mmlora.inference.engine import GenerationSettings
from mmlora.models.adapter_fit import ADAPTER_WEIGHTS
from mmlora.models.adapter_loading import model_config_for

LABELS = {"model": "--model", "adapter": "--adapter", "adapter_sha256": "the adapter's weights",
          "min_pixels": "--min-pixels", "max_pixels": "--max-pixels", "max_new_tokens": "--max-new-tokens",
          "temperature": "--temperature", "top_p": "--top-p", "num_beams": "--num-beams", "seed": "--seed"}
"""Each recorded setting as the user sets it, for the refusal line."""


def record_path(output: Path) -> Path:
    """Where the record of `output` lives: `<output>.meta.json`."""
    return output.with_name(output.name + ".meta.json")


def file_sha256(path: Path) -> str:
    """sha256 of the file, read in 1 MiB pieces (hashlib.file_digest needs Python 3.11; 3.10 is
    supported)."""
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while piece := handle.read(1 << 20):
            hasher.update(piece)
    return hasher.hexdigest()


def run_record(model: str | None, adapter: str | None, min_pixels: int | None, max_pixels: int | None,
               settings: GenerationSettings) -> dict:
    """What this run's answers depend on: the model and pixel bounds as they will be loaded (the
    adapter's recipe and the model folder's recorded bounds applied), the adapter's folder and
    weights hash, and the generation settings. Read without loading any weights."""
    cfg = model_config_for(model, adapter, min_pixels, max_pixels)
    name = str(Path(cfg.name).resolve()) if Path(cfg.name).is_dir() else cfg.name
    weights = Path(adapter) / ADAPTER_WEIGHTS if adapter else None
    return {"model": name, "adapter": str(Path(adapter).resolve()) if adapter else None,
            "adapter_sha256": file_sha256(weights) if weights and weights.is_file() else None,
            "min_pixels": cfg.min_pixels, "max_pixels": cfg.max_pixels,
            "max_new_tokens": settings.max_new_tokens, "temperature": settings.temperature,
            "top_p": settings.top_p, "num_beams": settings.num_beams, "seed": settings.seed}


def differences(recorded: dict, current: dict) -> list[str]:
    """Each setting that differs, as `--flag OLD (this run: NEW)`. An adapter folder moved or
    copied elsewhere, with the same weights, is the same adapter."""
    same_weights = current.get("adapter_sha256") and recorded.get("adapter_sha256") == current["adapter_sha256"]
    return [f"{LABELS.get(key, key)} {_shown(key, recorded.get(key))} (this run: {_shown(key, current.get(key))})"
            for key in current if recorded.get(key) != current[key] and not (key == "adapter" and same_weights)]


def _shown(key: str, value) -> str:
    if value is None:
        return "none"
    return value[:12] if key == "adapter_sha256" else str(value)


def check_record(output: Path, current: dict, has_answers: bool) -> None:
    """Before `--resume` answers more into `output`: MmloraError naming what differs when its
    answers were made with other settings; one warning line when it has answers but no record
    (written by an older mmlora), which then resumes unchecked."""
    path = record_path(output)
    if not has_answers:
        return
    if not path.is_file():
        print(f"mmlora: --output {output} has no record of the model and settings that answered it ({path.name}: "
              "written by an older mmlora); resuming without checking them.", file=sys.stderr)
        return
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise MmloraError(f"{path} cannot be read ({err}); it records what answered --output {output}: restore it, "
                          "or rerun without --resume into a new --output.") from None
    changed = differences(recorded if isinstance(recorded, dict) else {}, current)
    if changed:
        raise MmloraError(f"--output {output} was answered with other settings: {'; '.join(changed)}. Resume with "
                          "the same settings, or rerun without --resume into a new --output.")


def write_record(output: Path, current: dict) -> None:
    """Record what answers `output` (written whole, then renamed into place)."""
    path = record_path(output)
    staging = path.with_name(path.name + ".tmp")
    try:
        staging.write_text(json.dumps(current, indent=1) + "\n", encoding="utf-8")
        os.replace(staging, path)
    except OSError as err:
        raise MmloraError(f"{path} cannot be written ({err.strerror or err}); choose another --output.") from None
