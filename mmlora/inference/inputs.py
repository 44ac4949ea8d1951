"""What `mmlora infer` answers: `--image` flags, a folder of images, or a JSONL file of requests.

A JSONL line is `{"image": "a.png", "prompt": "..."}` (or `"images": [...]` for several, placed
by `<image>` markers; `"question"` is read as the prompt; `"system"` optional; `--prompt` and
`--system` are the defaults for lines without them). Image paths in a JSONL file are read from
the file's folder and may not leave it unless allowed, URLs are fetched only when allowed:
the data layer's rules (mmlora/data/images.py). A line that cannot be used becomes a RowError
located at `file:line` and naming the field, for the caller to skip and count.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mmlora.data.jsonrows import jsonl_rows
from mmlora.data.pathkinds import not_a_file
from mmlora.data.rowtext import check_unicode
from mmlora.data.samples import RowError
from mmlora.errors import MmloraError
from mmlora.inference.engine import Request, request_sample, resolve_images
from mmlora.models.plaintext import SENTINELS


@dataclass
class Item:
    """One request to answer, and the fields its output line repeats (a JSONL line's `id` when it
    has one, `image` or `images`, `prompt`, `system` when set), as the user wrote them."""

    request: Request
    shown: dict
    image_field: str | None = None
    """The JSONL field that holds the images ("image" or "images"), named in errors; None for
    images given on the command line or found in a folder."""


@dataclass(frozen=True)
class ImageRules:
    """Where image references may point (the data layer's data.allow_urls / allow_outside_root)."""

    allow_urls: bool = False
    allow_outside_root: bool = False


def image_suffixes() -> set[str]:
    """File extensions Pillow opens (lower case, with the dot): what a folder's images are."""
    from PIL import Image

    Image.init()
    return set(Image.registered_extensions())


def _item(images: list, shown_images: list, prompt: str, system: str | None, where: str) -> Item:
    shown = {"image": shown_images[0]} if len(shown_images) == 1 else {"images": shown_images}
    shown["prompt"] = prompt
    if system:
        shown["system"] = system
    return Item(Request(prompt, images, system=system, where=where), shown)


def items_from_flags(images: list[str], prompt: str, system: str | None, rules: ImageRules) -> list[Item]:
    """The one request of `--image ... --prompt ...` (several images: one prompt about all)."""
    resolved = resolve_images(images, "--image", allow_urls=rules.allow_urls)
    item = _item(resolved, images, prompt, system, "--image")
    try:
        reserved_characters(prompt, "--prompt")
        reserved_characters(system or "", "--system")
        request_sample(item.request, prompt_field="--prompt")  # `<image>` markers, before the model loads
    except RowError as err:
        raise MmloraError(err.detail) from None
    return [item]


def items_from_folder(folder: Path, prompt: str, system: str | None) -> tuple[list[Item], int]:
    """One request per image file under `folder` (subfolders included, sorted by path), and the
    number of other files (not images by their extension), which are left alone."""
    suffixes = image_suffixes()
    files = sorted(p for p in folder.rglob("*") if not not_a_file(p))
    images = [p for p in files if p.suffix.lower() in suffixes]
    return [_item([p], [str(p)], prompt, system, str(p)) for p in images], len(files) - len(images)


def items_from_jsonl(path: Path, prompt: str | None, system: str | None,
                     rules: ImageRules) -> Iterator[Item | RowError]:
    """The requests of a JSONL file, line by line; a line that cannot be used is a RowError (a
    line repeating an earlier line's `id` too: its answer could not be told apart)."""
    first_with_id: dict[str, str] = {}
    for where, row in jsonl_rows(path):
        if isinstance(row, RowError):
            yield row.at(where)
            continue
        try:
            unique_id(row, where, first_with_id)
            yield _jsonl_item(row, where, path.parent, prompt, system, rules)
        except RowError as err:
            yield err.at(where)


def unique_id(row, where: str, first_with_id: dict[str, str]) -> None:
    """RowError when `row` repeats the `id` of an earlier line (`first_with_id`: each id as JSON,
    so 1 and "1" differ as the output writes them, and the line that had it first, skipped or
    not); else its id is recorded."""
    if not isinstance(row, dict) or "id" not in row:
        return
    same = json.dumps(row["id"], sort_keys=True)
    if same in first_with_id:
        raise RowError("bad_row", f"field \"id\" is {same[:40]}, the id of {first_with_id[same]} too: each line "
                                  "needs its own id to tell its answer apart")
    first_with_id[same] = where


def _jsonl_item(row, where: str, root: Path, prompt: str | None, system: str | None, rules: ImageRules) -> Item:
    if not isinstance(row, dict):
        raise RowError("bad_row", f"expected a JSON object with \"image\" and \"prompt\", got {type(row).__name__}")
    check_unicode(row)  # a lone surrogate: the tokenizer would fail on the whole batch
    misspelt(row)
    line_id = request_id(row["id"]) if "id" in row else None
    if "image" in row and "images" in row:
        raise RowError("bad_row", "give \"image\" or \"images\", not both")
    refs = image_refs(row)
    prompt_name = next((f'field "{key}"' for key in ("prompt", "question") if key in row), "--prompt")
    text = row.get("prompt", row.get("question", prompt))
    if text is None:
        raise RowError("missing_question", "field \"prompt\" is missing (or give --prompt for every line)")
    if not isinstance(text, str) or not text.strip():
        raise RowError("missing_question", f"{prompt_name} is {_not_text(text)}: expected the prompt as text")
    line_system = row.get("system", system)
    if line_system is not None and not isinstance(line_system, str):
        raise RowError("bad_row", "field \"system\" must be text")
    reserved_characters(text, prompt_name)
    reserved_characters(line_system or "", 'field "system"' if "system" in row else "--system")
    try:
        resolved = resolve_images(refs, where, root, rules.allow_urls, rules.allow_outside_root)
    except RowError as err:
        raise RowError(err.reason, f"field \"{image_field(row)}\": {err.detail}") from None
    item = _item(resolved, refs, text, line_system, where)
    item.image_field = image_field(row)
    if "id" in row:
        item.shown = {"id": line_id, **item.shown}
    request_sample(item.request, prompt_field=prompt_name)  # `<image>` markers against images, before the model loads
    return item


REQUEST_FIELDS = ("image", "images", "prompt", "question", "system")
SAME_ROLE = {"image": ("image", "images"), "images": ("image", "images"), "prompt": ("prompt", "question"),
             "question": ("prompt", "question"), "system": ("system",)}


def misspelt(row: dict) -> None:
    """RowError for a field that looks like a misspelt request field (`promt`, `imgae`): its
    value would be ignored and the line answered with --prompt instead. Other fields (an id, a
    reference answer) are left alone."""
    for key in row:
        if key not in REQUEST_FIELDS:
            close = difflib.get_close_matches(key, REQUEST_FIELDS, n=1, cutoff=0.8)
            if close and not any(field in row for field in SAME_ROLE[close[0]]):  # else it is another field
                raise RowError("bad_row", f"field \"{key}\" is not a request field: did you mean \"{close[0]}\"?")


def reserved_characters(text: str, field: str) -> None:
    """RowError naming `field` when its text holds characters mmlora reserves (Unicode's
    Supplementary Private Use Area-A, models/plaintext.py): the encoder would refuse the whole
    batch it is in."""
    if SENTINELS.search(text):
        raise RowError("bad_row", f"{field} holds characters of Unicode's Supplementary Private Use Area-A "
                                  "(U+F0000..U+FFFFD), which mmlora reserves; remove them")


def request_id(value):
    """A line's `id`, repeated unchanged on its answer line: text or a number (a finite one: the
    output must stay JSON). RowError naming the field otherwise."""
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return value
    shown = "NaN or infinite (a number)" if isinstance(value, float) else _not_text(value)
    raise RowError("bad_row", f"field \"id\" is {shown}: expected text or a number, which its answer line repeats")


def image_refs(row: dict) -> list[str]:
    """The image references of a JSONL line; RowError naming the field when they are missing,
    empty or not text."""
    if "image" not in row and "images" not in row:
        raise RowError("bad_row", "field \"image\" (a path or URL) or \"images\" (a list of them) is missing")
    if "image" in row:
        if not isinstance(row["image"], str) or not row["image"].strip():
            raise RowError("bad_row", f"field \"image\" is {_not_text(row['image'])}: expected a path or URL as text "
                                      "(several images: \"images\", a list)")
        return [row["image"]]
    refs = row["images"]
    if not isinstance(refs, list) or not refs:
        raise RowError("bad_row", f"field \"images\" is {_not_text(refs)}: expected a non-empty list of paths or URLs")
    for i, ref in enumerate(refs):
        if not isinstance(ref, str) or not ref.strip():
            raise RowError("bad_row", f"field \"images\"[{i}] is {_not_text(ref)}: expected a path or URL as text")
    return refs


def _not_text(value) -> str:
    """How a field that should be text is wrong, for an error: `empty`, or `5 (a number)`."""
    if isinstance(value, str) and value.strip():
        return f"{json.dumps(value)[:40]} (text)"
    if isinstance(value, str) or value is None or value == []:
        return "empty"
    kinds = {bool: "true/false", int: "a number", float: "a number", list: "a list", dict: "an object"}
    return f"{json.dumps(value)[:40]} ({kinds.get(type(value), type(value).__name__)})"


def image_field(row: dict) -> str:
    """The field of a JSONL line that holds its images: "image" or "images"."""
    return "image" if "image" in row else "images"


def read_items(image: list[str] | None, images: str | None, prompt: str | None, system: str | None,
               rules: ImageRules) -> tuple[list[Item | RowError], int]:
    """Every request the command line names (and located problems), and the count of
    non-image files a folder held. MmloraError when `--images` names nothing usable."""
    if image:
        return list(items_from_flags(image, prompt, system, rules)), 0
    source = Path(images)
    if source.is_dir():
        return items_from_folder(source, prompt, system)
    if problem := not_a_file(source):
        raise MmloraError(f"--images {images} {problem}: give a folder of images or a .jsonl file.")
    if source.suffix.lower() not in (".jsonl", ".ndjson"):
        raise MmloraError(f"--images {images}: expected a folder or a .jsonl file of "
                          "{\"image\": ..., \"prompt\": ...} lines, got a '" + source.suffix + "' file.")
    return list(items_from_jsonl(source, prompt, system, rules)), 0
