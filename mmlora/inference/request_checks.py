"""Checks of a `/v1/chat/completions` body beyond its shape (openai_protocol.py parses that):
parameters this server does not know, and text the model cannot be given. Each fails as a 400 in
OpenAI's error shape naming the parameter, before the request reaches a batch: never a 500.
"""

from __future__ import annotations

import difflib

from mmlora.data.rowtext import lone_surrogate
from mmlora.inference.context_length import context_overflow
from mmlora.inference.engine import GenerationSettings, Request
from mmlora.inference.openai_protocol import UNSUPPORTED, ApiError
from mmlora.models.plaintext import SENTINELS

ACCEPTED = ("model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stream",
            "stream_options", "n", "response_format", "frequency_penalty", "presence_penalty", "user", "store",
            "metadata", "service_tier", "parallel_tool_calls")
"""Request fields this server reads, or may ignore because they do not change the answer."""
PENALTIES = ("frequency_penalty", "presence_penalty")


def check_parameters(body: dict) -> None:
    """An unknown field (a typo such as `max_token` would otherwise be ignored) or a penalty
    other than 0 (not implemented) is a 400 naming it, as OpenAI's API refuses unknown fields."""
    for name in body:
        if name not in ACCEPTED and name not in UNSUPPORTED:
            close = difflib.get_close_matches(name, ACCEPTED, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; this server reads {', '.join(ACCEPTED)}."
            raise ApiError(400, f"Unrecognized request argument supplied: {name}{hint}", name,
                           code="unknown_parameter")
    for name in PENALTIES:
        if body.get(name) not in (None, 0):
            raise ApiError(400, f"'{name}' other than 0 is not supported by this server (mmlora serve); leave it out.",
                           name)


def check_texts(body: dict, request: Request) -> None:
    """Text the tokenizer cannot take: a lone surrogate (a broken \\u escape), or characters of
    Unicode's Supplementary Private Use Area-A, which mmlora reserves (models/plaintext.py)."""
    found = lone_surrogate(body.get("messages"))
    if found:
        path, index, char = found
        raise ApiError(400, f"messages{path}: holds a lone surrogate \\u{ord(char):04x} at character {index + 1}, "
                            "not valid Unicode text (a broken \\u escape?).", "messages", code="not_utf8")
    texts = [("the system message", request.system or "")]
    texts += [(f"earlier turn {i + 1}", turn.text) for i, turn in enumerate(request.history)]
    for where, text in texts + [("the last user message", request.prompt)]:
        if SENTINELS.search(text):
            raise ApiError(400, f"{where}: holds characters of Unicode's Supplementary Private Use Area-A "
                                "(U+F0000..U+FFFFD), which mmlora reserves to keep special-token strings plain "
                                "text; remove them.", "messages", code="reserved_characters")


def check_length(engine, request: Request, settings: GenerationSettings) -> None:
    """A conversation whose prompt (chat template, text and visual tokens) and max_tokens pass
    the model's context is a 400, as OpenAI answers it (mmlora/inference/context_length.py)."""
    overflow = context_overflow(engine, request, settings)
    if overflow:
        raise ApiError(400, f"{overflow.describe('max_tokens')}; shorten the conversation, lower max_tokens or "
                            "send smaller images.", "messages", code="context_length_exceeded")
