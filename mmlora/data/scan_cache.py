"""The pre-scan's cache as `mmlora cache` sees it: its entries, what each is for, its size.

Layout (data/arrowscan.py writes it, under scanstore.cache_root()): a finished result is a folder
named by its 32-hex fingerprint holding scan*.arrow files and scan.json (written last; it records
the data source and split); a scan in progress is a temporary folder `FINGERPRINT.XXXXXXXX`; a
`FINGERPRINT.serial` file (naming the launch that wrote it: scan_wait.py) tells the other ranks of
that launch that a split was scanned in one process.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from mmlora.data.cache_entries import (
    HASH32, SIZE_NOTE_FILE, CacheEntry, CacheListing, inspect_tree, is_recent, read_json, root_items,
    size_note,
)
from mmlora.data.scanstore import cache_root
from mmlora.errors import MmloraError

RESULT_FILE = re.compile(r"scan[\w.-]*\.arrow|scan\.json|rows\.arrow|tmp\w+")
"""Files a scan folder holds: datasets' map writes scan*.arrow (through tmp* files), step 1 rows.arrow."""
WORK_FOLDER = re.compile(r"[0-9a-f]{32}\.[a-z0-9_]{8}")
"""tempfile.mkdtemp(prefix=FINGERPRINT + '.') of a scan being written."""
SERIAL_MARKER = re.compile(r"[0-9a-f]{32}\.serial")


def _result_file(parts: tuple[str, ...], is_dir: bool) -> str | None:
    if is_dir or len(parts) != 1 or not RESULT_FILE.fullmatch(parts[0]):
        return None
    return "ok" if parts[0] == "scan.json" or parts[0].endswith(".arrow") else "temp"


def describe_result(meta: dict) -> str:
    """What a scan result is for, from its scan.json."""
    if "source" not in meta:
        return "data source not recorded (scanned by an earlier mmlora)"
    return f"{meta.get('split', '?')} split of {meta['source']}"


def list_scan_cache(root: Path | None = None, describe: bool = True) -> CacheListing:
    """Every entry of the scan cache at `root` (default: scanstore.cache_root()) and every item there
    that is not one; `describe=False` skips reading each scan.json (sizes only)."""
    listing = CacheListing("scan", Path(root).expanduser() if root is not None else cache_root())
    now = time.time()
    for item in root_items(listing.root):
        path, is_dir = Path(item.path), item.is_dir(follow_symlinks=False)
        if item.name == SIZE_NOTE_FILE and not is_dir:
            continue
        if not is_dir and SERIAL_MARKER.fullmatch(item.name):
            info = item.stat(follow_symlinks=False)
            listing.entries.append(CacheEntry(path, info.st_size, info.st_mtime, "marker: a scan that ran in one process"))
            continue
        finished = is_dir and HASH32.fullmatch(item.name) and (path / "scan.json").is_file()
        if not (finished or (is_dir and WORK_FOLDER.fullmatch(item.name))):
            listing.foreign.append(f"{item.name} (not a scan result)")
            continue
        tree = inspect_tree(path, _result_file)
        if tree.unexpected:
            listing.foreign.append(f"{item.name} (holds {tree.unexpected}, which a scan does not write)")
            continue
        if finished:
            marker = path / "scan.json"
            about = describe_result(read_json(marker)) if describe else ""
            busy = bool(tree.newest_temp) and is_recent(tree.newest_temp, now)
            listing.entries.append(CacheEntry(path, tree.size, marker.stat().st_mtime, about, busy=busy))
        else:
            newest = max(tree.newest, item.stat(follow_symlinks=False).st_mtime)
            busy = is_recent(newest, now)
            listing.entries.append(CacheEntry(path, tree.size, newest, "unfinished scan", busy=busy, leftover=not busy))
    return listing


def scan_cache_note() -> str | None:
    """The end-of-scan line about the cache's size (cache_entries.size_note), on the first
    process of a machine only."""
    if int(os.environ.get("LOCAL_RANK", "0")) != 0:
        return None
    try:
        return size_note(list_scan_cache(describe=False))
    except (OSError, MmloraError):  # a note: an unreadable cache must not fail the scan it follows
        return None
