"""`mmlora` command line: one small function per command, heavy imports only inside them.

Nothing here imports torch at module level: `infer --gpu` must set CUDA_VISIBLE_DEVICES before
torch is first imported, or the setting would be ignored.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from pathlib import Path

from mmlora.errors import MmloraError

EPILOG = """examples:
  mmlora demo                                   offline tiny-model demo (CPU, ~2 min)
  mmlora train tiny_vqa train.epochs=3 lora.r=16
  mmlora infer --adapter runs/tiny_vqa --image assets/demo/images/x.png --prompt "What color is the shape?"
  CUDA_VISIBLE_DEVICES=0 mmlora infer --model Qwen/Qwen2-VL-2B-Instruct --image cat.jpg --prompt "Describe the image."
  mmlora recipes                                list shipped recipes; `mmlora recipes cp NAME DEST` to customise
"""


def cmd_train(args) -> int:
    from mmlora.config import load_recipe
    from mmlora.train import train

    recipe = load_recipe(args.recipe, args.overrides)
    if args.output_dir:
        recipe.train.output_dir = args.output_dir
    result = train(recipe)
    print(f"adapter: {result.output_dir}")
    return 0


def apply_gpu_selection(gpu: str | None) -> None:
    """`--gpu 0,1` -> CUDA_VISIBLE_DEVICES, before torch is imported; without it, keep the env."""
    if gpu is None:
        return
    if "torch" in sys.modules:
        raise MmloraError("--gpu must be applied before torch is imported (internal ordering bug).")
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu


def cmd_infer(args) -> int:
    apply_gpu_selection(args.gpu)
    from mmlora.infer import answer_one

    print(answer_one(args.model, args.adapter, args.image, args.prompt, args.max_new_tokens,
                     args.min_pixels, args.max_pixels))
    return 0


def cmd_recipes(args) -> int:
    from mmlora.config import load_recipe
    from mmlora.paths import resolve_recipe_path, shipped_recipes

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
        shutil.copyfile(source, dest)
        print(f"copied {source.stem} to {dest}")
        return 0
    if args.action == "show":
        if not args.name:
            raise MmloraError("usage: mmlora recipes show NAME")
        print(resolve_recipe_path(args.name).read_text(), end="")
        return 0
    if args.action == "fields":
        from mmlora.config import field_docs

        for name, help_text, default in field_docs():
            print(f"{name} (default: {default!r})\n    {help_text}")
        return 0
    raise MmloraError(f"Unknown recipes action '{args.action}': use ls, cp, show or fields.")


def cmd_demo(args) -> int:
    from mmlora.demo import run_demo

    run_demo(args.recipe, args.overrides)
    return 0


def cmd_tiny(args) -> int:
    from mmlora.modeling import save_tiny_model

    out = save_tiny_model(args.model_id, args.out)
    print(f"saved {args.model_id} to {out} (load it with --model {out})")
    return 0


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
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("infer", help="answer a prompt about one image", description=(
        "Answer a prompt about one image with a base model, optionally plus a LoRA adapter."))
    p.add_argument("--model", help="hub id, local dir or tiny id (default: the adapter's base model)")
    p.add_argument("--adapter", help="directory written by `mmlora train`")
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--prompt", required=True, help="question or instruction")
    p.add_argument("--gpu", help="GPU ids to use, e.g. 0 or 0,1 (sets CUDA_VISIBLE_DEVICES)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--min-pixels", type=int, default=None, help="default: the adapter's recipe, else 3136")
    p.add_argument("--max-pixels", type=int, default=None, help="default: the adapter's recipe, else 200704")
    p.set_defaults(func=cmd_infer)

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

    p = sub.add_parser("tiny", help="save a built-in tiny model as a normal checkpoint folder")
    p.add_argument("out", help="destination directory")
    p.add_argument("--model-id", default="tiny/qwen2-vl")
    p.set_defaults(func=cmd_tiny)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
