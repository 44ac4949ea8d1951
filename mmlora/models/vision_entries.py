"""The vision feature cache as `mmlora cache` sees it: one entry per namespace (model, dtype,
weights, bounds; models/vision_cache.py), its size, what it is for and when it was last used.

Layout (models/vision_store.py writes it, under train.vision_cache_dir or default_cache_dir()):
NAMESPACE/about.json (the facts the namespace hashes; touched whenever a run opens it) and
NAMESPACE/XX/KEY.safetensors, one file per image, written as `.KEY.safetensors.PID.partial` first.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from mmlora.data.cache_entries import (
    HASH32, SIZE_NOTE_FILE, CacheEntry, CacheListing, inspect_tree, is_recent, read_json, root_items,
    size_note,
)
from mmlora.models.vision_store import default_cache_dir
from mmlora.errors import MmloraError

FEATURES = re.compile(r"[0-9a-f]{40}\.safetensors")
PARTIAL = re.compile(r"\.[0-9a-f]{40}\.safetensors\.\d+\.partial")


def _namespace_item(parts: tuple[str, ...], is_dir: bool) -> str | None:
    if len(parts) == 1:
        ours = parts[0] == "about.json" if not is_dir else re.fullmatch(r"[0-9a-f]{2}", parts[0]) is not None
        return "ok" if ours else None
    if len(parts) == 2 and not is_dir:
        return "ok" if FEATURES.fullmatch(parts[1]) else "temp" if PARTIAL.fullmatch(parts[1]) else None
    return None


def describe_namespace(facts: dict, images: int) -> str:
    """What a namespace holds features of, from its about.json."""
    model = facts.get("model") or "model not recorded"
    details = ", ".join(str(facts[k]) for k in ("family", "dtype") if facts.get(k))
    return f"{model}" + (f" ({details})" if details else "") + f", {images} images"


def list_vision_cache(root: Path | None = None, describe: bool = True) -> CacheListing:
    """Every namespace of the vision cache at `root` (default: default_cache_dir()) and every item
    there that is not one; `describe=False` skips reading each about.json."""
    listing = CacheListing("vision", Path(root).expanduser() if root is not None else default_cache_dir())
    now = time.time()
    for item in root_items(listing.root):
        path = Path(item.path)
        if item.name == SIZE_NOTE_FILE and item.is_file(follow_symlinks=False):
            continue
        if not (item.is_dir(follow_symlinks=False) and HASH32.fullmatch(item.name) and (path / "about.json").is_file()):
            listing.foreign.append(f"{item.name} (not a vision cache namespace)")
            continue
        tree = inspect_tree(path, _namespace_item)
        if tree.unexpected:
            listing.foreign.append(f"{item.name} (holds {tree.unexpected}, which the vision cache does not write)")
            continue
        marker = path / "about.json"
        about = describe_namespace(read_json(marker), tree.files - 1) if describe else ""
        busy = bool(tree.newest_temp) and is_recent(tree.newest_temp, now)
        listing.entries.append(CacheEntry(path, tree.size, marker.stat().st_mtime, about, busy=busy))
    return listing


def vision_cache_note(root: Path) -> str | None:
    """The end-of-training line about the cache's size (cache_entries.size_note)."""
    try:
        return size_note(list_vision_cache(root, describe=False))
    except (OSError, MmloraError):  # a note: an unreadable cache must not fail the run it follows
        return None
