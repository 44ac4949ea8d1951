"""`mmlora` command line: one small function per command, heavy imports only inside them.

Nothing here imports torch at module level: `infer --gpu` must set CUDA_VISIBLE_DEVICES before
torch is first imported, or the setting would be ignored.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

from mmlora.cli_checks import apply_gpu_selection, collect_overrides
from mmlora.errors import MmloraError
from mmlora.evaluation.metrics.task import VQA_NORMALIZATIONS
from mmlora.inference.chat import register as register_chat
from mmlora.models.cache_command import register as register_cache
from mmlora.inference.export import register as register_export
from mmlora.inference.infer import register as register_infer
from mmlora.inference.serve_cli import register as register_serve

EPILOG = """examples:
  mmlora demo                                   offline tiny-model demo (CPU, ~2 min)
  mmlora train tiny_vqa train.epochs=3 lora.r=16
  mmlora infer --adapter runs/tiny_vqa --image assets/demo/images/x.png --prompt "What color is the shape?"
  CUDA_VISIBLE_DEVICES=0 mmlora infer --model Qwen/Qwen2-VL-2B-Instruct --image cat.jpg --prompt "Describe the image."
  mmlora recipes                                list shipped recipes; `mmlora recipes cp NAME DEST` to customise
  mmlora eval tiny_vqa --compare-base           base vs fine-tuned: metrics.json, report.md, report.html
  mmlora score --task vqa predictions.jsonl     metrics of a predictions file (no model)
  mmlora data check tiny_caption                rows, bad rows by reason, image/length stats (no weights)
  mmlora plan tiny_smolvlm_vqa lora.vision=lora parameters per component, adapter size, visual tokens
  mmlora merge --adapter runs/tiny_vqa --out merged   standalone model for --model merged (or vLLM)
  mmlora infer --model tiny/qwen2-vl --images photos/ --prompt "Describe." --output preds.jsonl   batched
  mmlora chat --adapter runs/tiny_vqa               multi-turn chat in the terminal (/image PATH, /reset)
  mmlora export runs/tiny_vqa                       vLLM check (modules, flags) and a model card
  mmlora serve --adapter runs/tiny_vqa --ui         OpenAI-compatible API on :8000 (+ a try-it page at /)
  mmlora cache clear --older-than 30                scan and vision-feature caches unused for 30 days
"""


def cmd_train(args) -> int:
    from mmlora.config.loading import load_recipe
    from mmlora.training.preflight import check_before_training

    # Recipe, overrides and installed packages are checked before torch is imported: a typo
    # fails in a fraction of a second, not after the seconds torch and transformers take.
    recipe = load_recipe(args.recipe, args.overrides)
    if args.output_dir:
        recipe.train.output_dir = args.output_dir
    check_before_training(recipe)
    from mmlora.training.train import train

    result = train(recipe, resume=args.resume, overwrite=args.overwrite)
    if result.interrupted_by is not None:
        from mmlora.training.train import interrupted_message

        print(interrupted_message(result, args.recipe, args.overrides), file=sys.stderr)
        return 128 + result.interrupted_by  # 130 for Ctrl-C, 143 for SIGTERM: stopped, resumable
    return 0  # the training summary (mmlora/training/console.py) said where the adapter is


def cmd_recipes(args) -> int:
    from mmlora.config.loading import load_recipe
    from mmlora.config.paths import resolve_recipe_path, shipped_recipes

    if args.action in (None, "ls"):
        for path in shipped_recipes():
            recipe = load_recipe(path)
            print(f"{path.stem:<32} task={recipe.task:<8} model={recipe.model.name}")
        return 0
    if args.action == "cp":
        if not args.name or not args.dest:
            raise MmloraError("usage: mmlora recipes cp NAME DEST")
        source = resolve_recipe_path(args.name)
        dest = Path(args.dest)
        if dest.is_dir():
            dest = dest / source.name
        if dest.exists():
            raise MmloraError(f"{dest} exists; choose another destination or delete it first.")
        if not dest.parent.is_dir():
            raise MmloraError(f"cannot copy to {dest}: the folder {dest.parent} does not exist; create it "
                              "first or choose another destination.")
        try:
            shutil.copyfile(source, dest)
        except OSError as err:
            raise MmloraError(f"cannot copy to {dest}: {err.strerror or err}.") from None
        print(f"copied {source.stem} to {dest}")
        return 0
    if args.action == "show":
        if not args.name:
            raise MmloraError("usage: mmlora recipes show NAME")
        print(resolve_recipe_path(args.name).read_text(), end="")
        return 0
    if args.action == "fields":
        from mmlora.config.schema import field_docs

        for name, help_text, default in field_docs():
            print(f"{name} (default: {default!r})\n    {help_text}")
        return 0
    raise MmloraError(f"Unknown recipes action '{args.action}': use ls, cp, show or fields.")


def cmd_demo(args) -> int:
    from mmlora.demo import run_demo

    run_demo(args.recipe, args.overrides)
    return 0


def cmd_merge(args) -> int:
    # Checked before the merge module imports peft and torch (seconds): a wrong path fails at once.
    adapter, out = Path(args.adapter), Path(args.out)
    if not adapter.is_dir():
        raise MmloraError(f"--adapter {args.adapter}: no such directory. Give the train.output_dir of a "
                          "finished `mmlora train` (or one of its checkpoint-N folders).")
    if out.exists() and not out.is_dir():
        raise MmloraError(f"--out {out} is a file; give a new or empty directory.")
    if out.is_dir() and any(out.iterdir()):
        raise MmloraError(f"{out} exists and is not empty; choose another --out or delete it first.")
    from mmlora.models.merge import merge_adapter

    result = merge_adapter(args.adapter, args.out, args.dtype, base=args.base)
    print(f"merged {args.adapter} into {result.base} ({result.dtype}): {result.tensors} tensors in "
          f"{result.shards} shard(s), each read back and checked. Use it with --model {result.out_dir}")
    from mmlora.inference.export import export_folder

    print("\n".join(export_folder(result.out_dir)))
    return 0


def cmd_plan(args) -> int:
    from mmlora.config.loading import load_recipe
    from mmlora.models.plan import format_plan, make_plan

    recipe = load_recipe(args.recipe, args.overrides)
    print(format_plan(make_plan(recipe), recipe))
    return 0


def cmd_tiny(args) -> int:
    from mmlora.models.loading import save_tiny_model

    out = save_tiny_model(args.model_id, args.out)
    print(f"saved {args.model_id} to {out} (load it with --model {out})")
    return 0


def cmd_eval(args) -> int:
    apply_gpu_selection(args.gpu)
    from mmlora.config.loading import load_recipe_and_set_keys
    from mmlora.evaluation.report import metric_rows
    from mmlora.evaluation.run import run_eval
    from mmlora.models.processor_files import recipe_sets_bounds

    recipe, set_keys = load_recipe_and_set_keys(args.recipe, args.overrides)  # one parse: errors said once
    if args.vqa_normalization:
        recipe.eval.vqa_normalization = args.vqa_normalization
    report, out = run_eval(recipe, args.adapter, args.compare_base, args.split, args.limit, args.output_dir,
                           recipe_sets_bounds=recipe_sets_bounds(set_keys))
    labels = [run.label for run in report.runs] + (["difference"] if len(report.runs) > 1 else [])
    print(f"{'metric (x100)':<26}" + "".join(f"{label:>12}" for label in labels))
    for row in metric_rows(report):
        print(f"{row[0]:<26}" + "".join(f"{cell:>12}" for cell in row[1:]))
    print(f"{len(report.items)} samples; wrote predictions.jsonl, metrics.json, report.md, report.html to {out}")
    return 0


def cmd_score(args) -> int:
    import json

    from mmlora.evaluation.metrics.score_file import PredictionFileError, score_predictions_file

    try:
        scores = score_predictions_file(args.predictions, args.task, args.vqa_normalization)
    except PredictionFileError as err:
        raise MmloraError(f"{err}. Each line needs \"prediction\" and \"references\" (or \"answers\" for vqa).") from None
    except OSError as err:
        raise MmloraError(f"cannot read '{args.predictions}': {err.strerror or err}.") from None
    except ValueError as err:
        raise MmloraError(str(err)) from None
    print(json.dumps(scores, indent=2))
    return 0


def cmd_data(args) -> int:
    from mmlora.data.check import run_data_command

    # Positional items: recipes, and section.key=value overrides applied to each of them.
    recipes = [item for item in args.items if "=" not in item]
    overrides = [item for item in args.items if "=" in item]
    if not recipes:
        raise MmloraError(f"usage: mmlora data {args.action} RECIPE [RECIPE ...] [section.key=value ...]")
    text, status = run_data_command(args.action, recipes, overrides, args.json,
                                    getattr(args, "n", 3), getattr(args, "split", "train"))
    print(text)
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmlora",
        description="LoRA fine-tuning of vision-language models for captioning and VQA.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="fine-tune with a recipe", description=(
        "Fine-tune a VLM with LoRA as a recipe says. Override any field: section.key=value."))
    p.add_argument("recipe", help="recipe YAML file, or a shipped recipe name (see `mmlora recipes`)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=3 lora.r=16")
    p.add_argument("--output-dir", help="shortcut for train.output_dir=...")
    p.add_argument("--resume", nargs="?", const="latest", metavar="DIR|latest",
                   help="continue from the newest complete checkpoint in train.output_dir "
                        "(or from checkpoint DIR); the recipe must match the checkpoint's")
    p.add_argument("--overwrite", action="store_true",
                   help="reuse a non-empty train.output_dir (its old checkpoints are deleted)")
    p.set_defaults(func=cmd_train)

    register_infer(sub)
    register_chat(sub)
    register_export(sub)

    p = sub.add_parser("recipes", help="list, show or copy shipped recipes", description=(
        "ls: list shipped recipes; cp NAME DEST: copy one to customise; show NAME: print it; "
        "fields: every recipe field with its default and meaning."))
    p.add_argument("action", nargs="?", choices=["ls", "cp", "show", "fields"])
    p.add_argument("name", nargs="?")
    p.add_argument("dest", nargs="?")
    p.set_defaults(func=cmd_recipes)

    p = sub.add_parser("demo", help="offline demo: tiny model, synthetic shapes, before/after", description=(
        "Fine-tune the built-in tiny Qwen2-VL on synthetic shapes (CPU, offline) and print answers "
        "and accuracy before and after training."))
    p.add_argument("--recipe", default="tiny_vqa", help="recipe to run (default: tiny_vqa)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=2")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("eval", help="generate on the eval split, score, report (base vs fine-tuned)", description=(
        "Generate answers on a data split with the base model and/or the fine-tuned adapter, score "
        "them with the task's metrics (VQA accuracy, exact match, ANLS; BLEU, ROUGE-L, CIDEr-D) and "
        "write predictions.jsonl, metrics.json, report.md and report.html. Without --adapter, the "
        "adapter in the recipe's train.output_dir is used when there is one."))
    p.add_argument("recipe", help="recipe YAML file or shipped recipe name (model, data, eval settings)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. eval.batch_size=4")
    p.add_argument("--adapter", help="adapter directory written by `mmlora train` (default: train.output_dir)")
    p.add_argument("--compare-base", action="store_true",
                   help="also evaluate the base model on the same samples and report both side by side")
    p.add_argument("--split", default="eval", help="eval (default), train, or a JSONL data file")
    p.add_argument("--limit", type=int, help="evaluate only the first N samples (default: eval.limit)")
    p.add_argument("--output-dir", help="where the four files go (default: ADAPTER/eval_SPLIT)")
    p.add_argument("--gpu", help="GPU ids to use, e.g. 0 (sets CUDA_VISIBLE_DEVICES)")
    p.add_argument("--vqa-normalization", choices=VQA_NORMALIZATIONS,
                   help="VQA accuracy's answer normalisation (default: eval.vqa_normalization, always); "
                        "official: only when the annotators disagree, as vqaEval.py")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("score", help="metrics of a predictions file, as JSON (no model)", description=(
        "Score a JSONL predictions file without loading any model. Each line: {\"prediction\": ..., "
        "\"references\": [...]} (for vqa, \"answers\": [...] also works); `mmlora eval` writes such "
        "files (predictions.jsonl)."))
    p.add_argument("predictions", help="JSONL file of predictions")
    p.add_argument("--task", required=True, choices=["vqa", "caption"], help="which metrics to compute")
    p.add_argument("--vqa-normalization", choices=VQA_NORMALIZATIONS, default="always",
                   help="VQA accuracy's answer normalisation: always (default: prediction and every answer) "
                        "or official (only when the annotators disagree, as vqaEval.py); named in the output")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("data", help="check a recipe's datasets, or preview samples as the model sees them",
                       description="Scan a recipe's data with the model's processor only (no weights).")
    data_sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = data_sub.add_parser("check", help="rows, usable samples, bad rows by reason, image and length stats",
                                description=(
        "Scan every split of the recipe: rows, usable samples, bad rows by reason, image sizes, "
        "visual tokens, sequence lengths (min/median/p95/max), trained-token share, and samples "
        "dropped or truncated at data.max_length. Exit status 1 when `mmlora train` would refuse "
        "the data (bad rows with data.on_error=raise, or nothing usable)."))
    preview = data_sub.add_parser("preview", help="show samples with the trained spans marked", description=(
        "Show the first samples as the model will see them (image tokens collapsed to <token>xN), "
        "trained spans between [[ and ]]."))
    for q in (check, preview):
        q.add_argument("items", nargs="+", metavar="RECIPE|OVERRIDE", help=(
            "recipe YAML files or shipped recipe names, and dotted overrides for all of them, e.g. "
            "data.train=my.jsonl"))
        q.add_argument("--json", action="store_true", help=(
            "machine-readable output (for several recipes: an object keyed by recipe)"))
    preview.add_argument("--n", type=int, default=3, help="number of samples (default 3)")
    preview.add_argument("--split", choices=["train", "eval"], default="train")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("merge", help="merge an adapter into its base model and save a standalone model",
                       description=(
        "Fold the LoRA weights (and a fully trained projector) of DIR into the base weights and save "
        "safetensors shards + processor + chat template to OUT, loadable with "
        "AutoModelForImageTextToText.from_pretrained and `mmlora infer --model OUT`. Every shard is "
        "read back and checked. An adapter trained on a 4/8-bit base is merged into the unquantised base."))
    p.add_argument("--adapter", required=True, help="directory written by `mmlora train`")
    p.add_argument("--out", required=True, help="new directory for the merged model")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"],
                   help="weights dtype of the merged model (default: the recipe's model.dtype, auto -> bf16)")
    p.add_argument("--base", help="base model to merge into (default: the adapter's base model)")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("plan", help="parameter counts, adapter size and visual tokens of a recipe (no weights)",
                       description=(
        "Build the recipe's model from its config alone (no weights read), attach LoRA as training "
        "would, and print total/frozen/trainable parameters per component, the adapter size on disk "
        "and the visual tokens per image at model.min_pixels / max_pixels."))
    p.add_argument("recipe", help="recipe YAML file, or a shipped recipe name")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. lora.r=16 lora.vision=lora")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("tiny", help="save a built-in tiny model as a normal checkpoint folder")
    p.add_argument("out", help="destination directory")
    p.add_argument("--model-id", default="tiny/qwen2-vl")
    p.set_defaults(func=cmd_tiny)
    register_serve(sub)
    register_cache(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = collect_overrides(parser, argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.func(args)
    except MmloraError as err:
        print(f"mmlora: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mmlora: interrupted", file=sys.stderr)
        return 130
