"""`mmlora chat`: a multi-turn conversation with a model in the terminal.

Each line typed is a user turn, answered with the whole conversation so far (the model loads
once). Commands, on a line of their own:

    /image PATH   attach an image (path or, with --allow-urls, a URL) to the next message; repeatable
    /reset        forget the conversation and any attached images
    /help         list the commands
    /exit         end (so do /quit and end of input, Ctrl-D)

Answers go to stdout, one per turn (streamed as generated); everything else (the prompt sign,
notes, errors about a turn) goes to stderr, so `mmlora chat ... < questions.txt > answers.txt`
keeps only the answers. A bad image, an unknown command or a message that would take the
conversation past the model's context is reported and the chat goes on.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TextIO

from mmlora.data.images import load_image
from mmlora.errors import MmloraError
from mmlora.inference.context_length import context_overflow
from mmlora.inference.engine import GenerationSettings, Request, Turn, resolve_images
from mmlora.inference.flags import (
    add_generation_flags, add_model_flags, check_model_flags, load_engine, settings_from,
)

HELP = ("commands: /image PATH (attach an image to the next message), /reset (start over), "
        "/help, /exit (or Ctrl-D)")


def register(sub) -> None:
    """Add `mmlora chat` to the command line's subparsers."""
    p = sub.add_parser("chat", help="multi-turn chat with a model in the terminal (images by /image PATH)",
                       description="Chat with a base model, an adapter on its base, or a merged model. " + HELP)
    add_model_flags(p)
    p.add_argument("--system", help="system prompt for the whole conversation")
    add_generation_flags(p)
    p.set_defaults(func=cmd_chat)


@dataclass
class Conversation:
    """The turns so far and the images attached to the next user message."""

    system: str | None = None
    history: list[Turn] = field(default_factory=list)
    pending: list = field(default_factory=list)

    def reset(self) -> None:
        self.history, self.pending = [], []


def attach(conversation: Conversation, ref: str, allow_urls: bool) -> str:
    """Check and decode an image now (a bad path is reported at once, not at the next answer)."""
    resolved = resolve_images([ref], "/image", allow_urls=allow_urls)[0]
    conversation.pending.append(load_image(resolved, "/image"))
    return f"(image {len(conversation.pending)} attached to your next message: {ref})"


def chat_turn(engine, conversation: Conversation, text: str, settings: GenerationSettings, out: TextIO) -> None:
    """Answer `text` (with the attached images) in the context of the conversation, printing the
    answer as it is generated, and add both turns to the history."""
    request = Request(text, conversation.pending, conversation.system, conversation.history, where="chat")
    overflow = context_overflow(engine, request, settings)
    if overflow:  # past the context the model answers garbage; the turn is not added
        raise MmloraError(f"{overflow.describe('--max-new-tokens', 'the conversation with this message')}; "
                          "/reset to start over, or write a shorter message.")
    if settings.num_beams == 1:
        answer = ""
        for chunk in engine.stream(request, settings):
            answer += chunk
            out.write(chunk)
            out.flush()
    else:  # beam search settles the answer at the end
        answer = engine.answer([request], settings)[0]
        out.write(answer)
    out.write("\n")
    out.flush()
    conversation.history += [Turn("user", text, conversation.pending), Turn("assistant", answer)]
    conversation.pending = []


def run_chat(engine, lines: Iterable[str], settings: GenerationSettings, system: str | None = None,
             out: TextIO | None = None, note: TextIO | None = None, prompt_sign: str = "") -> int:
    """The chat loop over `lines` (the user's input); answers to `out` (default stdout),
    everything else to `note` (default stderr)."""
    out, note = out or sys.stdout, note or sys.stderr
    conversation = Conversation(system)
    note.write(prompt_sign)
    for line in lines:
        text = line.strip()
        command, _, rest = text.partition(" ")
        try:
            if command in ("/exit", "/quit"):
                break
            if command == "/reset":
                conversation.reset()
                print("(conversation cleared)", file=note)
            elif command == "/help":
                print(HELP, file=note)
            elif command == "/image":
                if not rest.strip():
                    raise MmloraError("/image needs a path: /image photo.jpg")
                print(attach(conversation, rest.strip(), engine.allow_urls), file=note)
            elif command.startswith("/"):
                raise MmloraError(f"unknown command {command}; {HELP}")
            elif text:
                chat_turn(engine, conversation, text, settings, out)
        except MmloraError as err:  # a bad turn is reported; the conversation goes on
            print(f"mmlora: {err}", file=note)
        note.write(prompt_sign)
        note.flush()
    return 0


def cmd_chat(args) -> int:
    settings = settings_from(args)
    check_model_flags(args)
    engine = load_engine(args)
    interactive = sys.stdin.isatty()
    if interactive:
        print(HELP, file=sys.stderr)
    return run_chat(engine, sys.stdin, settings, args.system, prompt_sign="> " if interactive else "")
