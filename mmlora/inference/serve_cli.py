"""`mmlora serve`: an OpenAI-compatible API (and with --ui a try-it page) for a model or adapter.

Backends: `transformers` (mmlora's own FastAPI server on the inference engine: CPU or one GPU,
batched) and `vllm` (vLLM's OpenAI server, started with the flags the adapter needs:
mmlora/inference/vllm_command.py). `auto` takes vLLM when it is importable and CUDA is
visible, else transformers, and says which and why.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import sys

from mmlora.errors import MmloraError
from mmlora.inference.flags import add_model_flags, check_model_flags

SERVE_EXTRA = "pip install 'mmlora[serve]'  (FastAPI and uvicorn)"


def register(subparsers) -> None:
    """Add the `serve` command to the CLI's subparsers."""
    p = subparsers.add_parser("serve", help="OpenAI-compatible API server (vLLM where present), with --ui a web page",
                              description=(
        "Serve a model (--model) or an adapter on its base (--adapter) behind an OpenAI-compatible API: "
        "GET /v1/models, POST /v1/chat/completions (image_url parts as data URLs, stream: true). "
        "The trained preprocessing (pixel bounds, chat template) comes with the adapter or folder."))
    add_model_flags(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--backend", choices=["auto", "transformers", "vllm"], default="auto", help=(
        "auto (default): vllm when vLLM is installed and CUDA is visible, else transformers"))
    p.add_argument("--served-model-name", help="the model id clients send (default: --adapter, else --model)")
    p.add_argument("--ui", action="store_true", help="also serve a try-it page at / (transformers backend)")
    p.add_argument("--max-batch", type=int, default=8,
                   help="most concurrent requests answered in one batch (transformers backend; default 8)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the backend choice (and the vLLM command) and exit without serving")
    p.set_defaults(func=cmd_serve)


def choose_backend(asked: str, ui: bool = False) -> tuple[str, str]:
    """(backend, why) for --backend `asked` (the page of --ui is the transformers backend's)."""
    from mmlora.inference.vllm_command import vllm_available

    if asked == "transformers":
        return "transformers", "asked for"
    if asked == "auto" and ui:
        return "transformers", "--ui is served by the transformers backend"
    usable, why_not = vllm_available()
    if asked == "vllm":
        return "vllm", "asked for" + ("" if usable else f"; {why_not} here")
    return ("vllm", "vLLM is installed and CUDA is visible") if usable else ("transformers", why_not)


def check_serve_args(args) -> None:
    """One-line errors for the flags, before anything heavy is imported; --gpu applied."""
    if not 0 < args.port < 65536:
        raise MmloraError(f"--port {args.port}: give a port between 1 and 65535.")
    if args.max_batch < 1:
        raise MmloraError(f"--max-batch {args.max_batch}: give 1 or more.")
    check_model_flags(args)


def check_port_free(host: str, port: int) -> None:
    """A one-line error when nothing can listen on host:port (taken, or not an address here)."""
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind((host, port))
    except OSError as err:
        raise MmloraError(f"cannot listen on {host}:{port} ({err.strerror or err}): choose another --port "
                          "(or stop what uses it), or an --host address of this machine.") from None


def cmd_serve(args) -> int:
    check_serve_args(args)
    served = args.served_model_name or args.adapter or args.model
    backend, why = choose_backend(args.backend, args.ui)
    print(f"mmlora serve: backend {backend} ({why})", file=sys.stderr)  # auto may still fall back below
    if backend == "vllm":
        from mmlora.inference.vllm_command import NotServableByVllm

        try:
            return serve_vllm(args, served)
        except NotServableByVllm as err:
            if args.backend != "auto":
                raise
            # auto: what vLLM cannot serve as trained, the transformers backend can.
            print(f"mmlora serve: backend transformers instead: {err}", file=sys.stderr)
    if args.dry_run:
        return 0
    return serve_transformers(args, served)


def serve_vllm(args, served: str) -> int:
    from mmlora.inference.vllm_command import build_vllm_command, vllm_available

    if args.ui:
        raise MmloraError("--ui is served by the transformers backend; use --backend transformers --ui, or point "
                          "any OpenAI-compatible web client at vLLM's API.")
    command = build_vllm_command(args.model, args.adapter, served, args.host, args.port,
                                 args.min_pixels, args.max_pixels)
    for note in command.notes:
        print(f"mmlora serve: {note}", file=sys.stderr)
    print(shlex.join(command.argv))
    if args.dry_run:
        return 0
    usable, why_not = vllm_available()
    if not usable:
        raise MmloraError(f"--backend vllm: {why_not}; install vLLM on a CUDA machine (pip install vllm), or use "
                          "--backend transformers.")
    sys.stdout.flush()
    sys.stderr.flush()
    # vLLM replaces this process: Ctrl-C and SIGTERM reach it directly and it shuts down cleanly
    # (a child under subprocess.call would be killed outright on Ctrl-C).
    os.execv(command.argv[0], command.argv)
    return 1  # not reached


def serve_transformers(args, served: str) -> int:
    missing = [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise MmloraError(f"mmlora serve needs {' and '.join(missing)}: {SERVE_EXTRA}.")
    from mmlora.inference.flags import load_engine
    from mmlora.inference.server_app import build_app, run_server

    check_port_free(args.host, args.port)  # before the model loads (seconds to minutes)
    engine = load_engine(args)
    app = build_app(engine, served, allow_urls=args.allow_urls, ui=args.ui, max_batch=args.max_batch)
    base = f"http://{args.host}:{args.port}"
    device = next(engine.model.parameters()).device
    print(f"mmlora serve: '{served}' on {device} at {base}/v1 (OpenAI API)"
          + (f"; try-it page at {base}/" if args.ui else "") + "; Ctrl-C stops", file=sys.stderr)
    run_server(app, args.host, args.port, verbose=args.verbose)
    return 0
