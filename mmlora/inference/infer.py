"""`mmlora infer`: answer one prompt about one or more images, or a whole folder / JSONL file
of requests in batches into a JSONL answers file (docs/inference.md#mmlora-infer).

Arguments are checked, and every input line read, before torch is imported: a typo or a bad
file fails in a fraction of a second. In batch mode a line or image that cannot be used is
skipped with one logged line naming file, line and field, counted in the summary, and the exit
status is 1; `--resume` after fixing them answers only those.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from mmlora.data.images import load_image
from mmlora.data.samples import RowError
from mmlora.errors import MmloraError
from mmlora.inference.context_length import context_overflow, model_context
from mmlora.inference.engine import GenerationSettings
from mmlora.inference.flags import (
    add_generation_flags, add_model_flags, check_model_flags, load_engine, settings_from,
)
from mmlora.inference.inputs import ImageRules, Item, items_from_flags, read_items
from mmlora.inference.predictions import PredictionWriter, answered_keys, check_output, line_key, unanswered

LOG_EVERY_S = 10.0
"""Off a terminal, a progress line at most this often (a bar would be noise in a log file)."""


def register(sub) -> None:
    """Add `mmlora infer` to the command line's subparsers."""
    p = sub.add_parser("infer", help="answer a prompt about images: one, a folder, or a JSONL file", description=(
        "Answer a prompt about one or more images (--image, repeatable: one prompt about them all) "
        "and print the answer; or answer every image of a folder, or every line of a JSONL file "
        "({\"image\": ..., \"prompt\": ...}), in batches into --output (one JSON line per answer). "
        "Uses a base model, an adapter on its base (merged in memory), or a merged model."))
    add_model_flags(p)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", action="append", help="image path or URL; repeat for several in one prompt")
    source.add_argument("--images", help="a folder of images, or a .jsonl file of requests (needs --output)")
    p.add_argument("--prompt", help="question or instruction (`<image>` places an image); with a JSONL file, "
                                    "the default for lines without \"prompt\"")
    p.add_argument("--system", help="system prompt (with a JSONL file, the default for lines without \"system\")")
    p.add_argument("--output", help="JSONL answers file: {\"image\", \"prompt\", \"prediction\"} per line")
    p.add_argument("--resume", action="store_true", help="continue an existing --output: answer only what it lacks")
    p.add_argument("--batch-size", type=int, default=8, help="requests per generate call (default 8)")
    add_generation_flags(p)
    p.add_argument("--allow-outside-root", action="store_true",
                   help="allow JSONL image paths outside the file's folder (absolute paths elsewhere, ../)")
    p.set_defaults(func=cmd_infer)


def check_args(args) -> None:
    """One-line errors for infer's own arguments, before torch is imported."""
    if args.image:
        for image in args.image:
            if Path(image).is_dir():
                raise MmloraError(f"--image {image} is a directory: give image files, or the folder as --images.")
    if args.prompt is None and (args.image or Path(args.images).is_dir()):
        raise MmloraError("--prompt is required (with a JSONL --images file, lines may carry their own).")
    if args.images and not args.output:
        raise MmloraError("--images needs --output FILE.jsonl, where the answers go, one JSON line each.")
    if args.output and args.images and Path(args.images).is_file() and Path(args.output).resolve() == Path(
            args.images).resolve():
        raise MmloraError(f"--output {args.output} is the --images file itself; answers go to a file of their own: "
                          "choose another --output.")
    if args.resume and not args.output:
        raise MmloraError("--resume continues an --output file; give --output.")
    if args.batch_size < 1:
        raise MmloraError(f"--batch-size: got {args.batch_size}, expected 1 or more.")


def cmd_infer(args) -> int:
    check_args(args)
    settings = settings_from(args)
    check_model_flags(args)
    if args.output:
        check_output(Path(args.output), args.resume)
    rules = ImageRules(args.allow_urls, args.allow_outside_root)
    found, others = read_items(args.image, args.images, args.prompt, args.system, rules)
    if others:
        print(f"mmlora: {others} file(s) under {args.images} are not images by their extension; left alone.",
              file=sys.stderr)
    items, skipped = [], 0
    for entry in found:
        if isinstance(entry, RowError):
            skipped += 1
            print(f"mmlora: skipped {entry}", file=sys.stderr)
        else:
            items.append(entry)
    writer, done = None, 0
    if args.output:
        output = Path(args.output)
        keys, torn = answered_keys(output)
        todo = [items[i] for i in unanswered([line_key(item.shown) for item in items], keys, output,
                                             args.images or "the --image request",
                                             [line_key(item.shown, with_id=False) for item in items])]
        done, items = len(items) - len(todo), todo
        writer = PredictionWriter(output, torn)
    if not items and not skipped and not done:
        raise MmloraError(f"--images {args.images} holds no images to answer about.")
    if args.image:  # the images of one prompt are read before the weights load: fail fast
        items = [decoded(item, strict=True) for item in items]
    engine = load_engine(args) if items else None  # all answered already: no need for weights
    if engine:
        check_answer_budget(engine, settings)
    try:
        answered, failed = answer_items(engine, items, settings, args.batch_size, writer, strict=bool(args.image))
    finally:
        if writer:
            writer.close()
    skipped += failed
    if writer is None:
        print(answered[0])
        return 0
    already = f"; {done} already in the file" if done else ""
    print(f"mmlora: answered {len(answered)} request(s) into {args.output}{already}"
          + (f"; skipped {skipped} (see above)" if skipped else ""), file=sys.stderr)
    return 1 if skipped else 0


def answer_one(model: str | None, adapter: str | None, image: str, prompt: str, max_new_tokens: int = 128,
               min_pixels: int | None = None, max_pixels: int | None = None) -> str:
    """Load the model (+ adapter, merged in) and answer one prompt about one image, greedily;
    the image and prompt are checked before the weights load."""
    from mmlora.inference.engine import InferenceEngine

    item = decoded(items_from_flags([image], prompt, None, ImageRules())[0], strict=True)
    engine = InferenceEngine.load(model, adapter, min_pixels, max_pixels)
    return engine.answer([item.request], GenerationSettings(max_new_tokens))[0]


def decoded(item: Item, strict: bool) -> Item | None:
    """The item with its images decoded (so one bad image skips its request, not the batch),
    or None after logging why it is skipped; `strict` raises instead."""
    try:
        item.request.images = [load_image(ref, item.request.where) for ref in item.request.images]
        return item
    except RowError as err:
        if strict:
            raise
        if item.image_field:
            err = RowError(err.reason, f"field \"{item.image_field}\": {err.detail}", item.request.where)
        print(f"mmlora: skipped {err}", file=sys.stderr)
        return None


def check_answer_budget(engine, settings: GenerationSettings) -> None:
    """One line, rather than a skip per request, when --max-new-tokens alone fills the context."""
    context = model_context(engine.model.config)
    if context and settings.max_new_tokens >= context:
        raise MmloraError(f"--max-new-tokens {settings.max_new_tokens} leaves no room for a prompt in the model's "
                          f"context of {context} tokens; lower it.")


def fits(engine, item: Item, settings: GenerationSettings, strict: bool) -> bool:
    """Whether the item's prompt and --max-new-tokens fit the model's context
    (mmlora/inference/context_length.py); False after logging why it is skipped, or with
    `strict` a one-line error."""
    overflow = context_overflow(engine, item.request, settings)
    if overflow is None:
        return True
    prompt = "--prompt or --system" if strict else "its prompt"
    problem = RowError("too_long", f"{overflow.describe('--max-new-tokens')}; shorten {prompt}, lower "
                                   "--max-new-tokens or give smaller images (--max-pixels)", item.request.where)
    if strict:
        raise MmloraError(problem.detail)
    print(f"mmlora: skipped {problem}", file=sys.stderr)
    return False


def answer_items(engine, items: list[Item], settings: GenerationSettings, batch_size: int,
                 writer: PredictionWriter | None, strict: bool = False) -> tuple[list[str], int]:
    """Answer `items` in batches, appending each batch's lines to `writer` (when given) before
    the next starts. Returns the answers and the number of requests skipped (a bad image, a
    prompt past the model's context). `strict` (one request named on the command line): a
    request that cannot be answered is a one-line error instead."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(items), unit="request", desc="answering", disable=not sys.stderr.isatty() or not writer)
    answers, skipped, last_log = [], 0, time.monotonic()
    for start in range(0, len(items), batch_size):
        chunk = items[start: start + batch_size]
        ready = [item for item in (decoded(i, strict=writer is None) for i in chunk) if item]
        ready = [item for item in ready if fits(engine, item, settings, strict)]
        skipped += len(chunk) - len(ready)
        batch_answers = engine.answer([item.request for item in ready], settings, batch_size) if ready else []
        answers += batch_answers
        if writer:
            writer.write([{**item.shown, "prediction": text} for item, text in zip(ready, batch_answers)])
        bar.update(len(chunk))
        if bar.disable and writer and (time.monotonic() - last_log >= LOG_EVERY_S):
            last_log = time.monotonic()
            print(f"mmlora: {start + len(chunk)}/{len(items)} requests done", file=sys.stderr)
    bar.close()
    return answers, skipped
