"""`mmlora merge`: fold a LoRA adapter (and a fully trained projector) into the base weights and
save a standalone model: safetensors shards + processor files + chat template, loadable with
plain `AutoModelForImageTextToText.from_pretrained` and `mmlora infer --model OUT`.

Every saved shard is read back and compared tensor by tensor with the merged model before the
command reports success: an export that silently dropped or corrupted a weight fails here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmlora.errors import MmloraError

DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16",
          "fp32": "float32", "float32": "float32"}


@dataclass
class MergeResult:
    out_dir: Path
    model: Any
    """The merged model, in memory (the one the saved shards were checked against)."""
    base: str
    dtype: str
    tensors: int
    shards: int


def _refuse_quantized_base(name: str, cfg) -> None:
    from mmlora.models.loading import load_config

    if getattr(load_config(name, cfg), "quantization_config", None) is not None:
        raise MmloraError(
            f"The base model '{name}' is stored quantised: LoRA cannot be merged into quantised "
            "weights without rounding the merged result again. Merge into the bf16 base instead: "
            "mmlora merge --adapter DIR --base <the unquantised checkpoint> --out DIR."
        )


def verify_saved_weights(out_dir: Path, model) -> tuple[int, int]:
    """Read every saved shard back and compare it with `model`; returns (tensors, shards).

    Names on disk follow transformers' checkpoint layout (`revert_weight_conversion`, as
    save_pretrained writes them). A tensor missing from disk is accepted only when it is tied
    to a saved one (e.g. lm_head sharing the embedding matrix).
    """
    import torch
    from safetensors import safe_open
    from transformers.core_model_loading import revert_weight_conversion

    expected = revert_weight_conversion(model, model.state_dict())
    index = out_dir / "model.safetensors.index.json"
    weight_map = json.loads(index.read_text())["weight_map"] if index.is_file() else None
    shards = sorted(set(weight_map.values())) if weight_map else ["model.safetensors"]
    saved = set()
    for shard in shards:
        path = out_dir / shard
        if not path.is_file():
            raise MmloraError(f"Merged checkpoint is incomplete: {path} is missing.")
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                if key not in expected:
                    raise MmloraError(f"{path} holds '{key}', which the merged model does not have.")
                if not torch.equal(handle.get_tensor(key), expected[key].detach().cpu()):
                    raise MmloraError(f"{path}: '{key}' differs from the merged weights after writing.")
                saved.add(key)
    if weight_map is not None and set(weight_map) != saved:
        raise MmloraError(f"{index} does not match the shards' contents.")
    stored = {expected[key].untyped_storage().data_ptr() for key in saved}
    dropped = [k for k in expected if k not in saved and expected[k].untyped_storage().data_ptr() not in stored]
    if dropped:
        raise MmloraError(f"Merged checkpoint in {out_dir} lacks {len(dropped)} weight(s), e.g. {dropped[:3]}.")
    return len(saved), len(shards)


def merge_adapter(adapter_dir: str | Path, out_dir: str | Path, dtype: str | None = None,
                  base: str | None = None, max_shard_size: str = "4GB") -> MergeResult:
    """Merge `adapter_dir` into its base model (or `base`) and save the result in `out_dir`."""
    from mmlora.models.adapter_loading import load_with_adapter, model_config_for

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise MmloraError(f"{out_dir} exists and is not empty; choose another --out or delete it first.")
    if dtype is not None and dtype not in DTYPES:
        raise MmloraError(f"--dtype {dtype!r}: expected one of bf16, fp16, fp32.")
    cfg = model_config_for(base, str(adapter_dir), None, None)
    _refuse_quantized_base(cfg.name, cfg)
    if cfg.quantization != "none":
        print(f"mmlora: the adapter was trained on a {cfg.quantization} base (QLoRA); merging into "
              "the unquantised base weights.")
    cfg.quantization = "none"
    cfg.dtype = DTYPES[dtype] if dtype else (cfg.dtype if cfg.dtype != "auto" else "bfloat16")
    # Merging is a one-off sum of weights: the CPU does it without competing for GPU memory.
    # An adapter trained on another base is refused before anything is written.
    merged, loaded = load_with_adapter(cfg, str(adapter_dir), device="cpu")
    merged.save_pretrained(out_dir, safe_serialization=True, max_shard_size=max_shard_size)
    # The trained bounds, template and processor class, as every loader reads them, plus
    # mmlora.json for `mmlora infer --model OUT` (mmlora/models/processor_files.py).
    loaded.processor.record = {**(loaded.processor.record or {}), "merged_adapter": str(adapter_dir.resolve())}
    loaded.processor.save_pretrained(out_dir)
    tensors, shards = verify_saved_weights(out_dir, merged)
    return MergeResult(out_dir, merged, cfg.name, cfg.dtype, tensors, shards)
