"""Command-line flags every inference command shares (`mmlora infer`, `mmlora chat`, a server):
which model, how to decode, and loading the engine after the flags are checked.

The checks run before torch is imported, so a wrong value fails in a fraction of a second; the
model family's own minimum image size is checked when its image processor loads
(mmlora/models/families/base.py).
"""

from __future__ import annotations

import sys

from mmlora.cli_checks import apply_gpu_selection
from mmlora.errors import MmloraError
from mmlora.inference.engine import GenerationSettings


def add_model_flags(p) -> None:
    """--model, --adapter, --gpu, --min-pixels, --max-pixels, --allow-urls."""
    p.add_argument("--model", help="hub id, local dir or tiny id (default: the adapter's base model)")
    p.add_argument("--adapter", help="directory written by `mmlora train`")
    p.add_argument("--gpu", help="GPU ids to use, e.g. 0 or 0,1 (sets CUDA_VISIBLE_DEVICES)")
    p.add_argument("--min-pixels", type=int, default=None,
                   help="default: the adapter's recipe, else the model folder's mmlora.json, else 3136")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="default: the adapter's recipe, else the model folder's mmlora.json, else 200704")
    p.add_argument("--allow-urls", action="store_true", help="fetch http(s) image URLs (refused otherwise)")


def add_generation_flags(p) -> None:
    """--max-new-tokens, --temperature, --top-p, --num-beams, --seed (see GenerationSettings)."""
    p.add_argument("--max-new-tokens", type=int, default=128, help="longest answer in tokens (default 128)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy; above 0: sampling")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (with --temperature above 0)")
    p.add_argument("--num-beams", type=int, default=1, help="beam search with N beams (default 1: none)")
    p.add_argument("--seed", type=int, help="random seed, for repeatable sampling")


def settings_from(args) -> GenerationSettings:
    """Generation settings from the flags; a value out of range is a one-line error."""
    for flag, value, ok in (("--max-new-tokens", args.max_new_tokens, args.max_new_tokens >= 1),
                            ("--num-beams", args.num_beams, args.num_beams >= 1),
                            ("--temperature", args.temperature, args.temperature >= 0),
                            ("--top-p", args.top_p, 0 < args.top_p <= 1)):
        if not ok:
            expected = {"--temperature": "0 or more", "--top-p": "above 0 and at most 1"}.get(flag, "1 or more")
            raise MmloraError(f"{flag}: got {value}, expected {expected}.")
    return GenerationSettings(args.max_new_tokens, args.temperature, args.top_p, args.num_beams, args.seed)


def check_model_flags(args) -> None:
    """One-line errors for the model flags, then --gpu applied (before torch is imported)."""
    if not args.model and not args.adapter:
        raise MmloraError("Give --model (hub id, local dir or tiny id) or --adapter DIR.")
    for flag, value in (("--min-pixels", args.min_pixels), ("--max-pixels", args.max_pixels)):
        if value is not None and value < 1:
            raise MmloraError(f"{flag}: got {value}, expected a positive number of pixels.")
    if args.min_pixels and args.max_pixels and args.min_pixels > args.max_pixels:
        raise MmloraError(f"--min-pixels ({args.min_pixels}) is larger than --max-pixels ({args.max_pixels}).")
    apply_gpu_selection(args.gpu)


def load_engine(args):
    """The InferenceEngine the model flags name (says once when it runs on the CPU)."""
    import torch

    from mmlora.inference.engine import InferenceEngine

    if not torch.cuda.is_available():
        print("mmlora: no CUDA device visible; running on CPU.", file=sys.stderr)
    return InferenceEngine.load(args.model, args.adapter, args.min_pixels, args.max_pixels,
                                allow_urls=args.allow_urls)
