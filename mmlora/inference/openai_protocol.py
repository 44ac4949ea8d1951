"""OpenAI's chat-completions format <-> mmlora's engine requests, without any web framework.

What a request may hold (https://platform.openai.com/docs/api-reference/chat):

- `messages`: `system` (or `developer`) messages first, then user and assistant turns ending
  with a user turn. Content is a string or a list of parts: `{"type": "text", "text": ...}` and
  `{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}`. http(s) image URLs
  are fetched only when the server allows URLs; any other URL (a file path, `file://`,
  `asset://`) is refused, since a client must not read the server's files. Images are checked as
  the data layer checks them (mmlora/data/images.py: size, decompression bombs, corrupt data).
- `max_tokens` (or `max_completion_tokens`), `temperature` (0 = greedy), `top_p`, `seed`,
  `stream`, `stream_options: {"include_usage": true}` (a last chunk with the token counts). Options mmlora cannot honour (`n` > 1, `stop`, `tools`, `logprobs`, ...) are refused
  with a 400 naming the parameter, rather than ignored.

Answers carry `usage` (prompt tokens as the model saw them, visual tokens included; completion
tokens up to and including the turn end; their total), as counted by the generation itself.

Errors are `ApiError`s carrying OpenAI's error body `{"error": {"message", "type", "param",
"code"}}` and the HTTP status the OpenAI API uses for them.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from mmlora.data.images import MAX_DOWNLOAD_BYTES, load_image, resolve_image
from mmlora.data.samples import IMAGE_MARKER, RowError
from mmlora.evaluation.generate import Generated
from mmlora.inference.engine import GenerationSettings, Request, Turn

DEFAULT_MAX_TOKENS = 128
UNSUPPORTED = ("stop", "tools", "tool_choice", "functions", "function_call", "logprobs", "top_logprobs",
               "logit_bias", "audio", "modalities", "prediction")
"""Request fields that change the answer and that mmlora does not implement: refused when set."""
SYSTEM_ROLES = ("system", "developer")


class ApiError(Exception):
    """An error answered in OpenAI's shape with `status`."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 kind: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class ChatCall:
    """One parsed `/v1/chat/completions` request."""

    request: Request
    settings: GenerationSettings
    stream: bool
    model: str
    include_usage: bool = False
    """stream_options.include_usage: a streamed answer ends with a chunk holding the usage."""


def _number(body: dict, name: str, default, low: float, high: float, integer: bool = False):
    value = body.get(name)
    if value is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise ApiError(400, f"'{name}' must be {kind} between {low} and {high}, got {value!r}.", name)
    return value


def generation_settings(body: dict) -> GenerationSettings:
    """Decoding settings from the request's sampling fields."""
    for name in UNSUPPORTED:
        if body.get(name) not in (None, [], {}, False):
            raise ApiError(400, f"'{name}' is not supported by this server (mmlora serve); leave it out.", name)
    if body.get("response_format") not in (None, {"type": "text"}):
        raise ApiError(400, "'response_format' other than {\"type\": \"text\"} is not supported by this server.",
                       "response_format")
    if body.get("n") not in (None, 1):
        raise ApiError(400, "'n' must be 1: this server returns one answer per request.", "n")
    tokens_field = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    top_p = float(_number(body, "top_p", 1.0, 0.0, 1.0))
    if top_p == 0:
        raise ApiError(400, "'top_p' must be above 0 (1 keeps every token).", "top_p")
    return GenerationSettings(
        max_new_tokens=_number(body, tokens_field, DEFAULT_MAX_TOKENS, 1, 1 << 20, integer=True),
        temperature=float(_number(body, "temperature", 0.0, 0.0, 2.0)),
        top_p=top_p,
        seed=_number(body, "seed", None, 0, (1 << 32) - 1, integer=True),
    )


def decode_image_url(url, where: str, allow_urls: bool):
    """A checked RGB PIL image from an `image_url`'s url: a base64 data URL, or an http(s) URL
    when `allow_urls`. Everything else is refused (400) without touching the file system."""
    if not isinstance(url, str) or not url.strip():
        raise ApiError(400, f"{where}: image_url.url must be a non-empty string.", "messages")
    url = url.strip()
    if url.startswith(("http://", "https://")) and not allow_urls:
        raise ApiError(400, f"{where}: image URLs are not fetched by this server; send the image as a "
                            "data URL (data:image/png;base64,...), or start it with --allow-urls.",
                       "messages", code="url_not_allowed")
    if not url.startswith(("data:", "http://", "https://")):  # never a path on the server
        raise ApiError(400, f"{where}: image_url.url must be a data URL (data:image/png;base64,...)"
                            f"{' or an http(s) URL' if allow_urls else ''}; got '{url[:40]}'.",
                       "messages", code="invalid_image")
    payload = url.partition(",")[2] if url.startswith("data:") else ""
    if len(payload) > (MAX_DOWNLOAD_BYTES // 3 + 1) * 4:  # base64 of more than the cap, before decoding
        raise ApiError(400, f"{where}: the image is larger than {MAX_DOWNLOAD_BYTES >> 20} MiB.",
                       "messages", code="image_too_large")
    try:
        # The data layer decodes data: URIs and fetches URLs (size-capped, cached), then checks
        # the image as it checks training images.
        return load_image(resolve_image(url, Path.cwd(), allow_urls=True), where=where)
    except RowError as err:
        raise ApiError(400, f"{where}: {err.detail}", "messages", code=err.reason) from None


def _content(content, where: str, allow_urls: bool, images_allowed: bool) -> tuple[str, list]:
    """(text with `<image>` markers where the images were, images) of one message's content."""
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise ApiError(400, f"{where}: content must be a string or a list of parts.", "messages")
    pieces, images = [], []
    for number, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            pieces.append(("text", part["text"]))
        elif kind == "image_url" and images_allowed:
            image_url = part.get("image_url")
            url = image_url.get("url") if isinstance(image_url, dict) else image_url
            images.append(decode_image_url(url, f"{where}.content[{number}]", allow_urls))
            pieces.append(("image", IMAGE_MARKER))
        else:
            allowed = "'text' and 'image_url'" if images_allowed else "'text'"
            raise ApiError(400, f"{where}.content[{number}]: unsupported part {str(part)[:60]}; "
                                f"parts may be {allowed}.", "messages")
    text = ""
    for index, (kind, piece) in enumerate(pieces):
        if index and kind == "text" and pieces[index - 1][0] == "text":
            text += "\n"
        text += piece
    return text, images


def chat_request(body: dict, allow_urls: bool = False) -> tuple[Request, GenerationSettings]:
    """The engine request (system, earlier turns, final user turn) and settings of a body."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list.", "messages")
    system, turns = [], []
    for number, message in enumerate(messages):
        where = f"messages[{number}]"
        role = message.get("role") if isinstance(message, dict) else None
        if role in SYSTEM_ROLES:
            if turns:
                raise ApiError(400, f"{where}: system messages must come before the conversation.", "messages")
            system.append(_content(message.get("content"), where, allow_urls, images_allowed=False)[0])
        elif role in ("user", "assistant"):
            text, images = _content(message.get("content"), where, allow_urls, images_allowed=role == "user")
            turns.append(Turn(role, text, images))
        else:
            raise ApiError(400, f"{where}: role must be system, user or assistant, got {role!r}.", "messages")
    if not turns or turns[-1].role != "user":
        raise ApiError(400, "the last message must be a user message (the question to answer).", "messages")
    last = turns.pop()
    request = Request(last.text, last.images, system="\n\n".join(system) or None, history=turns,
                      where="request")
    return request, generation_settings(body)


def parse_chat_call(body, served: str, allow_urls: bool = False) -> ChatCall:
    """Check a whole `/v1/chat/completions` body (a decoded JSON value)."""
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    model = body.get("model")
    if model not in (None, served):
        raise ApiError(404, f"The model '{model}' does not exist; this server serves '{served}'.", "model",
                       code="model_not_found")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false.", "stream")
    request, settings = chat_request(body, allow_urls)
    return ChatCall(request, settings, stream, served, include_usage=_include_usage(body, stream))


def _include_usage(body: dict, stream: bool) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise ApiError(400, "'stream_options' is only allowed when 'stream' is true.", "stream_options")
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise ApiError(400, "'stream_options' must be an object such as {\"include_usage\": true}.", "stream_options")
    return options.get("include_usage", False)


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def finish_reason(answer: Generated) -> str:
    """"stop" when the model ended its turn, "length" when max_tokens (or the context) cut it."""
    return "stop" if answer.stopped else "length"


def usage(answer: Generated) -> dict:
    """OpenAI's `usage` object (CompletionUsage) of one answer."""
    return {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
            "total_tokens": answer.prompt_tokens + answer.completion_tokens}


def chat_completion(answer: Generated, model: str) -> dict:
    """A non-streamed `chat.completion` object."""
    return {"id": completion_id(), "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                         "finish_reason": finish_reason(answer)}],
            "usage": usage(answer)}


def chat_chunk(chunk_id: str, model: str, delta: dict, finish_reason: str | None = None,
               with_usage: bool = False) -> dict:
    """One `chat.completion.chunk` of a stream (`with_usage`: its `usage` field, null, is there as
    OpenAI sends it when the request asked for usage)."""
    chunk = {"id": chunk_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
    return {**chunk, "usage": None} if with_usage else chunk


def usage_chunk(chunk_id: str, model: str, answer: Generated) -> dict:
    """The last chunk of a stream that asked for usage: no choices, the answer's usage."""
    return {"id": chunk_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [], "usage": usage(answer)}


def model_list(served: str, owner: str = "mmlora") -> dict:
    """The `/v1/models` answer: the one served model."""
    return {"object": "list", "data": [{"id": served, "object": "model", "created": int(time.time()),
                                        "owned_by": owner}]}
