"""Row formats -> internal samples. Every format ends as the same chat (see mmlora.data.samples).

- messages:  `{"messages": [{"role", "content"}...], "images": [...]}` (OpenAI / transformers
  style; content a string with `<image>` tags or a list of image/text parts)
- sharegpt:  `{"conversations": [{"from": "human"|"gpt", "value"}...], "image": ... | [...]}`
  (LLaVA; `<image>` tags place the images)
- caption:   `{"image", "caption"}` or `{"image", "captions": [...]}`
- vqa:       `{"image", "question", "answer"}` or `{..., "answers": [...]}` (VQAv2: strings or
  `{"answer": ...}` objects; the most common answer is trained)

In user text (a question, a user message, a ShareGPT human turn, the caption prompt) a literal
`<image>` marks where an image goes, in every format (`mmlora.data.samples.marker_parts`); in system
and assistant text it is plain text. Images without any placeholder in the conversation go before
the text of the first user turn, the order Qwen2-VL and LLaVA use. Text is stripped of whitespace
at its ends (spacing around a mid-sentence marker is kept), so the same content gives identical
samples in every format.
"""

from __future__ import annotations

import json

from mmlora.data.jsonrows import describe_wrapper
from mmlora.data.rowtext import as_text, check_unicode, field_list, is_blank, readable
from mmlora.data.samples import (
    FIELDS, IMAGE_MARKER, RowError, Sample, assistant_turn, marker_parts, most_common_answer,
    system_turn, text_part, user_turn,
)
from mmlora.errors import MmloraError


JSON_FIELDS = ("images", "captions", "answers", "messages", "conversations")
"""Fields that hold lists; given as JSON text (e.g. a CSV cell) they are decoded."""
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system"}


def parse_column_map(entries: list[str]) -> dict[str, str]:
    """`["img=image", "q=question"]` -> `{"img": "image", "q": "question"}`, checked."""
    mapping = {}
    for entry in entries:
        source, _, target = entry.partition("=")
        source, target = source.strip(), target.strip()
        if not source or not target:
            raise MmloraError(f"data.column_map: '{entry}' is not of the form source=target.")
        if target not in FIELDS:
            raise MmloraError(f"data.column_map: '{entry}' maps onto '{target}', not one of {', '.join(FIELDS)}.")
        mapping[source] = target
    return mapping


def detect_format(row: dict) -> str:
    """The format of one row, from the fields it has."""
    if "messages" in row:
        return "messages"
    if "conversations" in row:
        return "sharegpt"
    if "question" in row:
        return "vqa"
    if "caption" in row or "captions" in row:
        return "caption"
    if "answer" in row or "answers" in row:
        raise RowError("missing_question", "the row has an answer but no 'question' field")
    if "image" in row or "images" in row:
        raise RowError("missing_answer", "the row has an image but no 'caption', 'question'/'answer', "
                                         "'messages' or 'conversations' field")
    raise RowError("bad_row", f"no known fields (the row has {field_list(sorted(row))}){describe_wrapper(row)}; "
                              "rename columns with data.column_map")


def row_to_samples(row, cfg, column_map: dict[str, str] | None = None, where: str = "",
                   expand_captions: bool = False) -> list[Sample]:
    """One raw row -> its samples: several for a caption row when expand_captions is set and
    data.captions_per_image is `all`, else one. Image references are returned as found
    (paths unresolved); raises RowError.
    """
    if not isinstance(row, dict):
        raise RowError("bad_row", f"expected an object with named fields, got {readable(row)}")
    check_unicode(row)
    raw = row
    # Columnar sources (Parquet, datasets) give every row every column: null means absent.
    row = {column_map.get(key, key) if column_map else key: value for key, value in row.items() if value is not None}
    try:
        return _samples(_decode_json_strings(row), cfg, where, expand_captions)
    except RowError as err:
        absent = [source for source, target in (column_map or {}).items() if source not in raw and target not in row]
        if not absent:
            raise
        raise RowError(err.reason, f"{err.detail} (data.column_map renames {field_list(absent)}, but this row has no "
                                   f"such column; its fields: {field_list(sorted(raw))})") from None


def _samples(row: dict, cfg, where: str, expand_captions: bool) -> list[Sample]:
    kind = detect_format(row) if cfg.format == "auto" else cfg.format
    if kind == "caption":
        return caption_samples(row, cfg, where, expand_captions)
    if kind == "vqa":
        return [vqa_sample(row, cfg, where)]
    if kind == "sharegpt":
        return [messages_sample(sharegpt_to_messages(row), cfg, where, field="conversations")]
    return [messages_sample(row, cfg, where)]


def _decode_json_strings(row: dict) -> dict:
    """List fields stored as JSON text (a CSV cell `["a", "b"]`, a string column) are decoded."""
    decoded = dict(row)
    for name in JSON_FIELDS:
        value = row.get(name)
        if isinstance(value, str) and value.lstrip().startswith(("[", "{")):
            try:
                decoded[name] = json.loads(value)
            except json.JSONDecodeError as err:
                raise RowError("malformed_json", f"field '{name}' is not valid JSON ({err.msg})") from None
            except RecursionError:
                raise RowError("malformed_json", f"field '{name}' is JSON nested too deeply to read") from None
    return decoded


def _image_list(row: dict, *names: str) -> list:
    for name in names:
        value = row.get(name)
        if value is None:
            continue
        return list(value) if isinstance(value, (list, tuple)) else [value]
    return []


def _clean_texts(values, field_name: str) -> list[str]:
    if values is None:
        raise RowError("missing_answer", f"field '{field_name}' is missing")
    if not isinstance(values, list):
        values = [values]
    if not values:
        raise RowError("missing_answer", f"field '{field_name}' is an empty list")
    texts = [as_text(v.get("answer") if isinstance(v, dict) else v, field_name) for v in values]
    if not all(isinstance(t, str) for t in texts):
        raise RowError("bad_row", f"field '{field_name}' must hold text, got {readable(values[:3])}")
    # Zero-width spaces, joiners and other invisible characters alone are no answer either.
    texts = [t.strip() for t in texts]
    if all(is_blank(t) for t in texts):
        raise RowError("empty_answer", f"field '{field_name}' is empty" + _invisible_note(texts))
    return [t for t in texts if not is_blank(t)]


def _invisible_note(texts: list[str]) -> str:
    shown = next((t for t in texts if t), "")
    if not shown:
        return ""
    return f" (only invisible characters: {' '.join(f'U+{ord(ch):04X}' for ch in shown[:6])})"


def _with_system(messages: list[dict], cfg) -> list[dict]:
    if cfg.system_prompt and not (messages and messages[0]["role"] == "system"):
        return [system_turn(cfg.system_prompt)] + messages
    return messages


def _flat_images(row: dict) -> list:
    images = _image_list(row, "image", "images")
    if not images:
        raise RowError("bad_row", "field 'image' is missing (flat caption/VQA rows need an image)")
    return images


def caption_samples(row: dict, cfg, where: str, expand: bool) -> list[Sample]:
    """A captioning row: the recipe's caption prompt, then one caption as the answer.

    `captions_per_image: random` keeps one sample whose answer is drawn from `answer_options`
    each epoch; `all` gives one sample per caption when `expand` (training).
    """
    images = _flat_images(row)
    name = "captions" if row.get("captions") is not None else "caption"
    captions = _clean_texts(row.get(name), name)
    prompt = user_turn(cfg.caption_prompt, n_images=len(images), field="data.caption_prompt")
    if expand and cfg.captions_per_image == "all":
        return [Sample(images, _with_system([prompt, assistant_turn(c)], cfg), where, captions) for c in captions]
    options = captions if cfg.captions_per_image == "random" and len(captions) > 1 else []
    return [Sample(images, _with_system([prompt, assistant_turn(captions[0])], cfg), where, captions, options)]


def vqa_sample(row: dict, cfg, where: str) -> Sample:
    """A VQA row: the question (through data.question_template) and the most common answer."""
    images = _flat_images(row)
    question = as_text(row.get("question"), "question")
    if not isinstance(question, str) or is_blank(question):
        raise RowError("missing_question", f"field 'question' must be non-empty text, got {readable(question)}")
    name = "answers" if row.get("answers") is not None else "answer"
    answers = _clean_texts(row.get(name), name)
    prompt = cfg.question_template.replace("{question}", question.strip())
    messages = _with_system([user_turn(prompt, n_images=len(images), field="field 'question'"), assistant_turn(most_common_answer(answers))], cfg)
    return Sample(images, messages, where, answers)


def sharegpt_to_messages(row: dict) -> dict:
    """LLaVA / ShareGPT `conversations` -> the messages format (content keeps its `<image>` tags)."""
    turns = row.get("conversations")
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        raise RowError("bad_row", "field 'conversations' must be a list of {from, value} objects")
    system = row.get("system")
    if system is not None and not isinstance(system, str):  # a list or number is not a prompt: never drop it silently
        raise RowError("bad_row", f"field 'system' must be text, got {readable(system)}")
    messages = [{"role": "system", "content": system}] if system else []
    for i, turn in enumerate(turns):
        role = SHAREGPT_ROLES.get(str(turn.get("from", turn.get("role", ""))).lower())
        if role is None:
            raise RowError("bad_row", f"conversations[{i}].from is {readable(turn.get('from'))}, expected human or gpt")
        messages.append({"role": role, "content": turn.get("value", turn.get("content"))})
    return {"messages": messages, "images": _image_list(row, "image", "images")}


def _parts(content, where: str, inline: list, markers: bool) -> list[dict]:
    """Content -> image/text parts; image references carried inside parts go to `inline`.
    `markers`: `<image>` in the text marks an image (user turns); else it is plain text."""
    if isinstance(content, str):
        raw = [text_part(content)]
    elif isinstance(content, list):
        raw = content
    else:
        raise RowError("bad_row", f"{where}.content must be text or a list of parts, got {readable(content)}")
    parts = []
    for part in raw:
        if not isinstance(part, dict):
            raise RowError("bad_row", f"{where}.content has a part that is not an object: {readable(part)}")
        kind = _part_kind(part)
        if kind in ("image", "image_url"):
            ref = part.get("image") or part.get("path") or part.get("url") or part.get("image_url")
            if isinstance(ref, dict):
                ref = ref.get("url")
            if ref is not None:
                inline.append(ref)
            parts.append({"type": "image"})
        elif kind == "text":
            text = part["text"]  # a string: _plain_text_part refused any other text part
            if markers:
                parts += marker_parts(text)
            elif text.strip():
                parts.append(text_part(text.strip()))
        else:
            raise RowError("bad_row", f"{where}.content has a part of type {readable(kind)} (only image and text)")
    return parts


def messages_sample(row: dict, cfg, where: str, field: str = "messages") -> Sample:
    """A messages row: roles checked, contents turned into parts, images matched to placeholders."""
    raw = row.get("messages")
    if not isinstance(raw, list) or not all(isinstance(m, dict) for m in raw):
        raise RowError("bad_row", "field 'messages' must be a list of {role, content} objects")
    raw = [_plain_text_content(message, i) for i, message in enumerate(raw)]
    inline, messages = [], []
    for i, message in enumerate(raw):
        role = message["role"]  # one of system, user, assistant: _plain_text_content checked it
        parts = _parts(message.get("content"), f"messages[{i}]", inline, markers=role == "user")
        if role == "assistant" and any(p["type"] == "image" for p in parts):
            raise RowError("bad_row", f"messages[{i}] is an assistant turn with an image; images belong in user turns")
        if role == "assistant" and not parts:
            raise RowError("empty_answer", f"messages[{i}] is an empty assistant turn")
        messages.append({"role": role, "content": parts})
    if not any(m["role"] == "assistant" for m in messages):
        raise RowError("missing_answer", "field 'messages' has no assistant turn")
    _check_user_first(messages)
    images = _image_list(row, "images", "image")
    if inline and images:
        raise RowError("bad_row", "images are given both inside the messages and in 'images'; use one")
    images = images or inline
    placeholders = sum(p["type"] == "image" for m in messages for p in m["content"])
    if placeholders == 0 and images:
        first_user = next((m for m in messages if m["role"] == "user"), None)
        if first_user is None:
            raise RowError("bad_row", "the row has images but no user turn to put them in")
        first_user["content"] = [{"type": "image"} for _ in images] + first_user["content"]
    elif placeholders != len(images):
        raise RowError("image_mismatch", f"field '{field}': the user turns have {placeholders} image placeholder(s) "
                                         f"({IMAGE_MARKER} markers and image parts) but the row has {len(images)} "
                                         "image(s)")
    last_answer = [m for m in messages if m["role"] == "assistant"][-1]
    references = [" ".join(p["text"] for p in last_answer["content"])]
    return Sample(images, _with_system(messages, cfg), where, references)


def _plain_text_content(message: dict, index: int) -> dict:
    """A message whose numbers are text and whose invisible-only text is empty (so an
    assistant turn of zero-width spaces is an empty turn), before it becomes parts; a role or
    text part of the wrong type is refused here, shown as the user wrote it."""
    where = f"messages[{index}].content"
    if message.get("role") not in ("system", "user", "assistant"):
        raise RowError("bad_row", f"messages[{index}].role is {readable(message.get('role'))}, "
                                  "expected system, user or assistant")
    content = as_text(message.get("content"), where)
    if isinstance(content, str):
        content = "" if is_blank(content) else content
    elif isinstance(content, list):
        content = [_plain_text_part(part, where) for part in content]
    return {**message, "content": content}


def _part_kind(part: dict) -> str:
    """A content part's type; untyped parts are images when they name one, else text."""
    return part.get("type") or ("image" if "image" in part else "text")


def _plain_text_part(part, where: str):
    if not isinstance(part, dict) or _part_kind(part) != "text":
        return part  # images and unknown parts are checked in _parts
    text = as_text(part.get("text"), f"{where}.text")
    if not isinstance(text, str):
        raise RowError("bad_row", f"{where} has a text part without text: {readable(part)}")
    return {**part, "text": "" if is_blank(text) else text}


def _check_user_first(messages: list[dict]) -> None:
    """Chat templates expect the user to speak first (after any system turn); Qwen's renders
    an assistant-first conversation as nothing and Gemma's raises. Refused, with the fix."""
    first = next((i for i, m in enumerate(messages) if m["role"] != "system"), None)
    if first is not None and messages[first]["role"] == "assistant":
        raise RowError("bad_row", f"messages[{first}] is an assistant turn before any user turn: a conversation "
                                  "must start with the user (after an optional system turn); remove the opening "
                                  "assistant turn or move its text into the system turn")
