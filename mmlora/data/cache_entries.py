"""mmlora's derived caches on disk: what an entry is, its size and last use, and safe removal.

Both caches (the pre-scan's, data/scan_cache.py, and the vision features', models/vision_entries.py)
keep one folder per entry directly under their root, named by a 32-hex hash, with a marker file
inside (scan.json, about.json) whose modification time is the entry's last use: `mark_used` touches
it whenever the entry is read. An item under a root counts as an entry only when its name and every
file in it follow the layout mmlora writes; anything else is listed as foreign and never removed,
so a variable that mistakenly points a cache at a user's folder costs that folder nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mmlora.config.sizes import format_bytes
from mmlora.errors import MmloraError

HASH32 = re.compile(r"[0-9a-f]{32}")
IN_PROGRESS_SECONDS = 600
"""A temporary file or folder younger than this is taken to be written by a running process."""
SIZE_NOTE_STEP = 20 * 2**30
"""The end-of-run note says where a cache lives each time it grows past another multiple of this."""
SIZE_NOTE_FILE = ".mmlora-size-note"
"""In a cache root: the multiple of SIZE_NOTE_STEP last noted (so the note is not repeated every run)."""


@dataclass
class CacheEntry:
    """One removable item of a cache (a folder, or a small marker file)."""

    path: Path
    size: int
    last_used: float
    """Seconds since the epoch: the marker's mtime (the entry's newest file while unfinished)."""
    about: str
    """What the entry is for (data source and split, model), as far as it recorded it."""
    busy: bool = False
    """Being written by a running process (a temporary part younger than IN_PROGRESS_SECONDS)."""
    leftover: bool = False
    """Unfinished and no longer written (a killed run's): never read, so removed whatever its age."""


@dataclass
class CacheListing:
    kind: str
    """`scan` or `vision`."""
    root: Path
    entries: list[CacheEntry] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    """Items under the root that are not mmlora cache entries (named with the reason): left alone."""

    @property
    def size(self) -> int:
        return sum(entry.size for entry in self.entries)


@dataclass
class Tree:
    size: int = 0
    files: int = 0
    unexpected: str | None = None
    """The first path (relative) that does not follow the entry layout, if any."""
    newest_temp: float = 0.0
    newest: float = 0.0


def inspect_tree(folder: Path, kind_of: Callable[[tuple[str, ...], bool], str | None]) -> Tree:
    """Size and layout check of an entry folder. `kind_of(relative parts, is_dir)` says what each
    item is: "ok", "temp" (a part being written) or None (not mmlora's: the entry is not removable)."""
    tree = Tree()
    stack = [(folder, ())]
    while stack:
        current, parts = stack.pop()
        try:
            items = list(os.scandir(current))
        except OSError as error:
            tree.unexpected = tree.unexpected or f"{'/'.join(parts) or '.'} ({error.strerror})"
            continue
        for item in items:
            rel = (*parts, item.name)
            is_dir = item.is_dir(follow_symlinks=False)
            kind = None if item.is_symlink() else kind_of(rel, is_dir)
            if kind is None:
                tree.unexpected = tree.unexpected or "/".join(rel)
                continue
            if is_dir:
                stack.append((Path(item.path), rel))
                continue
            try:
                info = item.stat(follow_symlinks=False)
            except FileNotFoundError:  # removed meanwhile (a scan renaming its temporary files)
                continue
            tree.size, tree.files, tree.newest = tree.size + info.st_size, tree.files + 1, max(tree.newest, info.st_mtime)
            if kind == "temp":
                tree.newest_temp = max(tree.newest_temp, info.st_mtime)
    return tree


def root_items(root: Path) -> list[os.DirEntry]:
    """The items directly under a cache root, by name ([] when there is no such folder)."""
    try:  # is_dir() inside: it raises for a folder it may not look into (permission denied)
        if not root.is_dir():
            return []
        return sorted(os.scandir(root), key=lambda item: item.name)
    except OSError as error:
        raise MmloraError(f"cannot read the cache folder {root} ({error.strerror}); check its permissions, "
                          "or point the cache's variable at another folder.") from None


def mark_used(marker: Path) -> None:
    """Record that a cache entry was read now (its marker's mtime); a read-only cache stays as it is."""
    try:
        os.utime(marker)
    except OSError:
        pass


def is_recent(mtime: float, now: float | None = None) -> bool:
    return (now or time.time()) - mtime < IN_PROGRESS_SECONDS


def read_json(path: Path) -> dict:
    """A marker's JSON object, or {} when it cannot be read."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def remove_entry(entry: CacheEntry) -> None:
    """Delete one listed entry (a folder or a file)."""
    if entry.path.is_dir() and not entry.path.is_symlink():
        shutil.rmtree(entry.path)
    else:
        entry.path.unlink(missing_ok=True)


def size_note(listing: CacheListing, step: int = SIZE_NOTE_STEP) -> str | None:
    """One line saying where the cache lives and how big it is, when it has grown past another
    multiple of `step` since the last note (recorded in the root's SIZE_NOTE_FILE); else None."""
    level, marker = listing.size // step, listing.root / SIZE_NOTE_FILE
    try:
        noted = int(marker.read_text().strip() or 0)
    except (OSError, ValueError):
        noted = 0
    if level == noted:
        return None
    try:
        marker.write_text(f"{level}\n")  # also when it shrank, so that growing again is noted
    except OSError:
        return None
    if level < noted:
        return None
    count = len(listing.entries)
    return (f"{listing.kind} cache: {listing.root} has grown to {format_bytes(listing.size)} "
            f"({count} entr{'y' if count == 1 else 'ies'}); `mmlora cache list` shows them, "
            f"`mmlora cache clear {listing.kind} --older-than 30` removes those unused for 30 days")
