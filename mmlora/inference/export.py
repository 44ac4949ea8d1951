"""`mmlora export DIR`: will vLLM serve this adapter (or merged model) as trained, with which
flags; and a model card (README.md) from the run's files instead of PEFT's blank template.
`mmlora merge` runs the same on the folder it writes (docs/inference.md#mmlora-export).
"""

from __future__ import annotations

from pathlib import Path

from mmlora.errors import MmloraError
from mmlora.inference.vllm_check import check_adapter
from mmlora.models.adapter_fit import adapter_base_model
from mmlora.models.model_card import card_text, write_model_card
from mmlora.models.processor_files import read_record


def register(sub) -> None:
    """Add `mmlora export` to the command line's subparsers."""
    p = sub.add_parser("export", help="check an adapter or merged folder for vLLM and write its model card",
                       description=(
        "Report whether vLLM serves the folder as trained: which LoRA modules sit in the language model, "
        "the vision tower and the projector, which vLLM would drop or refuse, and the flags it needs "
        "(--enable-lora, --max-lora-rank, --enable-tower-connector-lora). Then write README.md, a model "
        "card with base model, data, recipe and metrics from the run's files (a README.md written by "
        "hand is kept). Reads file headers only: no weights are loaded."))
    p.add_argument("folder", help="adapter folder written by `mmlora train`, or a folder from `mmlora merge`")
    p.set_defaults(func=cmd_export)


def export_folder(folder: str | Path) -> list[str]:
    """Check `folder` for vLLM and write its model card; returns the lines to print."""
    folder = Path(folder)
    if (folder / "adapter_config.json").is_file():
        lines = check_adapter(folder).lines()
        text = card_text(folder, folder, adapter_base_model(folder), merged=False, vllm_lines=lines)
    elif (folder / "config.json").is_file():
        record = read_record(folder)
        adapter = Path(record["merged_adapter"]) if record.get("merged_adapter") else None
        lines = [f"vLLM: loads as is, as a plain model (vllm serve {folder}): every trained change, the vision "
                 "tower's and the projector's included, is in the merged weights."]
        run_dir = adapter if adapter and adapter.is_dir() else None
        text = card_text(folder, run_dir, record.get("base_model", "unknown"), merged=True, vllm_lines=lines)
    else:
        raise MmloraError(f"{folder} is neither an adapter folder (adapter_config.json) nor a model folder "
                          "(config.json): give a `mmlora train` output folder or a `mmlora merge` --out folder.")
    if write_model_card(folder, text):
        lines.append(f"model card: {folder / 'README.md'}")
    else:
        lines.append(f"model card: not written: {folder / 'README.md'} was written by hand and is kept.")
    return lines


def cmd_export(args) -> int:
    for line in export_folder(args.folder):
        print(line)
    return 0
