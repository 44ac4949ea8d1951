"""README.md model cards for adapter and merged folders, from the run's own files.

PEFT writes a blank template ("[More Information Needed]" throughout). The card written here
says what the run recorded: base model, data (data_report.json), recipe (recipe.yaml),
metrics (eval_metrics.json, train_log.jsonl, and `mmlora eval`'s eval_*/metrics.json), how to
use it, and whether vLLM serves it as trained (mmlora/inference/vllm_check.py, given by
`mmlora export` / `mmlora merge`). `mmlora train` writes it into the adapter folder when the
adapter is saved and again after the final evaluation, and into each `checkpoint-N/` and `best/`
with that folder's step and metrics (`write_snapshot_card`); export and merge rewrite it. A
README.md someone wrote by hand (neither PEFT's template nor an earlier card of mmlora) is kept,
also through PEFT's `save_pretrained`, which would edit it (`keep_own_readme`), and when a
checkpoint or best/ is replaced (`carry_own_readme`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

CARD_MARK = "<!-- model card written by mmlora (mmlora train, mmlora export); rewritten by both -->"
CARD_MARK_PREFIX = "<!-- model card written by mmlora"
"""What every card of mmlora starts its body with (earlier versions' wording included)."""
PEFT_TEMPLATE_MARK = "[More Information Needed]"


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _number(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _recipe(run_dir: Path) -> dict:
    try:
        return yaml.safe_load((run_dir / "recipe.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def _data_lines(run_dir: Path, recipe: dict) -> list[str]:
    data, report = recipe.get("data", {}), _json(run_dir / "data_report.json") or {}
    lines = []
    for split, part in (("train", report), ("eval", report.get("eval") or {})):
        source = part.get("source") or data.get(split)
        if not source:
            continue
        counts = (f": {part['samples']} samples from {part['rows']} rows, {part.get('skipped_rows', 0)} rows skipped"
                  if "samples" in part and "rows" in part else "")
        lines.append(f"- {split}: `{source}`{counts}")
    return lines or ["- not recorded (no recipe.yaml / data_report.json in the run folder)"]


def _recipe_lines(recipe: dict) -> list[str]:
    if not recipe:
        return ["- not recorded (no recipe.yaml in the run folder)"]
    lora, train, model = recipe.get("lora", {}), recipe.get("train", {}), recipe.get("model", {})
    targets = lora.get("targets")
    return [
        f"- task: {recipe.get('task')}",
        f"- LoRA: r={lora.get('r')}, alpha={lora.get('alpha')}, dropout={lora.get('dropout')}, "
        f"targets={', '.join(targets) if isinstance(targets, list) else targets}, vision tower: {lora.get('vision')}, "
        f"projector: {lora.get('projector')}" + (", DoRA" if lora.get("use_dora") else "")
        + (", rsLoRA" if lora.get("use_rslora") else ""),
        f"- training: epochs={train.get('epochs')}, max_steps={train.get('max_steps')}, "
        f"batch_size={train.get('batch_size')} x grad_accum={train.get('grad_accum')}, "
        f"learning_rate={train.get('learning_rate')}, seed={train.get('seed')}",
        f"- images: min_pixels={model.get('min_pixels')}, max_pixels={model.get('max_pixels')}",
        "- the full recipe: `recipe.yaml` in the adapter folder",
    ]


def _metric_lines(run_dir: Path) -> list[str]:
    lines = []
    for log in reversed(_read_lines(run_dir / "train_log.jsonl")):
        if "train_loss" in log:
            # A resumed run's train_loss covers only the steps after its checkpoint (train.py marks them).
            steps = (f"mean over steps {log['train_loss_first_step']}-{log.get('step')}, after the resumed checkpoint"
                     if "train_loss_first_step" in log else "mean over the run")
            lines.append(f"- training loss ({steps}): {_number(log['train_loss'])} at step {log.get('step')}")
            break
    during = _json(run_dir / "eval_metrics.json") or {}
    losses = [e for e in during.get("history", []) if "eval_loss" in e]
    if losses:
        lines.append(f"- eval loss: {_number(losses[-1]['eval_loss'])} at step {losses[-1].get('step')}")
    for name, values in (("final", during.get("final")), ("best", during.get("best"))):
        if isinstance(values, dict):
            shown = ", ".join(f"{k} {_number(v)}" for k, v in values.items() if isinstance(v, (int, float)))
            lines.append(f"- {name} generation metrics during training: {shown}")
    for metrics_file in sorted(run_dir.glob("eval_*/metrics.json")):
        summary = _json(metrics_file) or {}
        for label, values in (summary.get("models") or {}).items():
            shown = ", ".join(f"{k} {_number(v)}" for k, v in values.items()
                              if isinstance(v, (int, float)) and not isinstance(v, bool))
            lines.append(f"- `mmlora eval` on {summary.get('split')} ({summary.get('count')} samples, "
                         f"{metrics_file.parent.name}/metrics.json), {label}: {shown}")
    return lines or ["- none recorded (run `mmlora eval` to measure the adapter)"]


def _read_lines(path: Path) -> list[dict]:
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []
    return [row for row in rows if isinstance(row, dict)]


_NOT_METRICS = ("eval_loss", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second")


def _snapshot(files: Path) -> tuple[str, list[str]] | None:
    """What a run's `best/` or `checkpoint-N/` folder is (words for the title, metric lines), from
    its own best.json / trainer_state.json; None for a final adapter or a merged model. Only the
    folder's own numbers: the run's later metrics do not describe this snapshot."""
    best = _json(files / "best.json")
    if isinstance(best, dict) and {"metric", "value", "step"} <= best.keys():
        measured = "all of data.eval" if best["metric"] == "loss" else "the first eval.generate_subset eval samples"
        return (f"the best of its run by eval {best['metric']}, saved at step {best['step']}",
                [f"- eval {best['metric']}: {_number(best['value'])} at step {best['step']}, the best during "
                 f"training (eval.best_metric, on {measured})"])
    state = _json(files / "trainer_state.json")
    if not isinstance(state, dict) or "global_step" not in state:
        return None
    history = [e for e in state.get("log_history") or [] if isinstance(e, dict)]
    lines = [f"- training loss: {_number(e['loss'])} at step {e.get('step')} (the last logged before this checkpoint)"
             for e in [e for e in history if "loss" in e][-1:]]
    lines += [f"- eval loss: {_number(e['eval_loss'])} at step {e.get('step')}" for e in [e for e in history if "eval_loss" in e][-1:]]
    generated = [e for e in history if any(k.startswith("eval_") and k not in _NOT_METRICS for k in e)]
    for entry in generated[-1:]:
        shown = ", ".join(f"{k.removeprefix('eval_')} {_number(v)}" for k, v in entry.items()
                          if k.startswith("eval_") and k not in _NOT_METRICS and isinstance(v, (int, float)))
        lines.append(f"- generation metrics during training: {shown} at step {entry.get('step')}")
    return f"a checkpoint of its run at step {state['global_step']} of {state.get('max_steps')}", lines


def card_text(folder: Path, run_dir: Path | None, base: str, merged: bool, vllm_lines: list[str] | None,
              files: Path | None = None) -> str:
    """The model card of `folder` (an adapter, or a merged model made from `run_dir`);
    `vllm_lines` None: not checked yet (the card says how to check). `files`: where the folder's
    own files are while it is being written (a staged copy), else `folder`. A run's `best/` and
    `checkpoint-N/` get their step and their own metrics (`_snapshot`)."""
    files = files or folder
    if vllm_lines is None:
        vllm_lines = [f"not checked yet: `mmlora export {folder}` says whether vLLM serves it as trained, "
                      "with which flags, and rewrites this card"]
    snapshot = None if merged else _snapshot(files)
    # A snapshot carries the resolved recipe it was trained with; the run folder's comes at the end.
    recipe = _recipe(files) if snapshot else _recipe(run_dir) if run_dir else {}
    kind = "merged model" if merged else "LoRA adapter"
    use = (f"mmlora infer --model {folder} --image photo.jpg --prompt \"...\"" if merged else
           f"mmlora infer --adapter {folder} --image photo.jpg --prompt \"...\"")
    header = ["---", f"base_model: {base}", f"library_name: {'transformers' if merged else 'peft'}",
              "pipeline_tag: image-text-to-text", "tags:", "- mmlora", "- lora", "---", "", CARD_MARK, ""]
    about = f": {snapshot[0]}" if snapshot else ""
    if snapshot:
        metrics = snapshot[1] or ["- none logged yet"]
    else:
        metrics = _metric_lines(run_dir) if run_dir else ["- not recorded"]
    body = [f"# {folder.name}: {kind} fine-tuned from {base}", "",
            f"Trained with mmlora{' and merged into the base weights' if merged else ''}{about}. "
            "Everything below is read from the run's files.", "",
            "## Base model", "", f"`{base}`", "", "## Data", "", *(_data_lines(run_dir, recipe) if run_dir else
            ["- not recorded (the run folder is not available)"]), "",
            "## Recipe", "", *_recipe_lines(recipe), "",
            "## Metrics", "", *metrics, "",
            "## Use", "", "```bash", use, "```", "", "## Serving with vLLM", "", *[f"- {line}" for line in vllm_lines], ""]
    return "\n".join(header + body)


def write_model_card(folder: Path, text: str) -> bool:
    """Write README.md unless it is someone's own (kept: returns False)."""
    readme = folder / "README.md"
    if readme.is_file() and is_own_readme(readme.read_text(errors="replace")):
        return False
    readme.write_text(text)
    return True


def is_own_readme(text: str) -> bool:
    """A README.md someone wrote: neither PEFT's template nor a card of mmlora."""
    return CARD_MARK_PREFIX not in text and PEFT_TEMPLATE_MARK not in text


@contextmanager
def keep_own_readme(folder: Path) -> Iterator[None]:
    """Put a hand-written README.md of `folder` back as it was after the block (PEFT's
    `save_pretrained` adds its metadata and sections to an existing README.md)."""
    readme = Path(folder) / "README.md"
    own = readme.read_bytes() if readme.is_file() and is_own_readme(readme.read_text(errors="replace")) else None
    try:
        yield
    finally:
        if own is not None:
            readme.write_bytes(own)


def carry_own_readme(old: Path, new: Path) -> None:
    """Copy a hand-written README.md of `old` into `new`, a staged folder about to replace `old`
    (a checkpoint saved again, a new best): the replaced folder must not take it with it."""
    readme = Path(old) / "README.md"
    if readme.is_file() and is_own_readme(readme.read_text(errors="replace")):
        (Path(new) / "README.md").write_bytes(readme.read_bytes())


def write_snapshot_card(staged: Path, final: Path, run_dir: Path, base: str) -> bool:
    """The card of a run's `checkpoint-N/` or `best/` (`final`), written into its staged copy
    before the rename, in place of PEFT's template (a README.md of the user's carried over is kept)."""
    carry_own_readme(final, staged)
    return write_model_card(staged, card_text(final, run_dir, base, merged=False, vllm_lines=None, files=staged))


def write_run_card(run_dir: Path, base: str) -> bool:
    """The card of a training run's adapter folder, from the files written so far (no vLLM check)."""
    return write_model_card(run_dir, card_text(run_dir, run_dir, base, merged=False, vllm_lines=None))
