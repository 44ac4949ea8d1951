"""`mmlora cache`: list mmlora's derived caches (pre-scan results, vision features) and clear them.

Only entries that follow the layout mmlora writes are ever removed (data/cache_entries.py); an
entry being written by a running process is left alone; `--older-than DAYS` goes by last use (an
entry's marker is touched whenever a run reads it).
"""

from __future__ import annotations

import sys
import time

from mmlora.config.sizes import format_bytes
from mmlora.data.cache_entries import CacheListing, remove_entry
from mmlora.data.scan_cache import list_scan_cache
from mmlora.errors import MmloraError
from mmlora.models.vision_entries import list_vision_cache

KINDS = ("scan", "vision", "all")


def register(subparsers) -> None:
    """Add the `cache` command to the CLI's subparsers."""
    p = subparsers.add_parser("cache", help="list or clear mmlora's caches (pre-scan results, vision features)",
                              description=(
        "list (default): each cache's folder, its entries (what each is for), their size and last use. "
        "clear: remove entries (all, or those unused for --older-than DAYS); asks first unless --yes. "
        "Only mmlora cache entries are removed, never other files in the folder; entries being "
        "written by a running process are left alone. Caches: scan ($MMLORA_SCAN_CACHE, default "
        "~/.cache/mmlora/scan) and vision ($MMLORA_VISION_CACHE_DIR or train.vision_cache_dir, default "
        "~/.cache/mmlora/vision-features)."))
    p.add_argument("action", nargs="?", choices=["list", "clear"], default="list",
                   help="list (default): show the entries; clear: remove them")
    p.add_argument("which", nargs="?", choices=KINDS, default="all", help="which cache (default: all)")
    p.add_argument("--older-than", type=float, metavar="DAYS",
                   help="clear: only entries not used for DAYS days (fractions allowed)")
    p.add_argument("--yes", "-y", action="store_true", help="clear: do not ask before deleting")
    p.add_argument("--scan-dir", help="the scan cache's folder (default: $MMLORA_SCAN_CACHE or ~/.cache/mmlora/scan)")
    p.add_argument("--vision-dir", help="the vision cache's folder, e.g. a recipe's train.vision_cache_dir")
    p.set_defaults(func=cmd_cache)


def listings(which: str, scan_dir: str | None = None, vision_dir: str | None = None) -> list[CacheListing]:
    """The caches `which` names, listed."""
    found = []
    if which in ("scan", "all"):
        found.append(list_scan_cache(scan_dir))
    if which in ("vision", "all"):
        found.append(list_vision_cache(vision_dir))
    return found


def _age(seconds: float) -> str:
    for unit, length in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= length:
            count = int(seconds // length)
            return f"{count} {unit}{'s' if count > 1 else ''} ago"
    return "just now"


def format_listing(listing: CacheListing, now: float | None = None) -> str:
    """The text `mmlora cache list` prints for one cache."""
    now = now or time.time()
    if not listing.root.is_dir():
        state = "not a folder" if listing.root.exists() else "not created yet"
        return f"{listing.kind} cache: {listing.root} ({state})"
    count = len(listing.entries)
    lines = [f"{listing.kind} cache: {listing.root} ({count} entr{'y' if count == 1 else 'ies'}, "
             f"{format_bytes(listing.size)})"]
    for entry in sorted(listing.entries, key=lambda e: e.last_used, reverse=True):
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.last_used))
        state = ", being written" if entry.busy else ""
        lines.append(f"  {entry.path.name}  {format_bytes(entry.size):>10}  last used {used} "
                     f"({_age(now - entry.last_used)}{state})  {entry.about}")
    if listing.foreign:
        lines.append(f"  {foreign_summary(listing)} (never removed)")
    return "\n".join(lines)


def foreign_summary(listing: CacheListing, shown: int = 3) -> str:
    """How many items under the root are not cache entries, naming the first few."""
    more = len(listing.foreign) - shown
    names = ", ".join(listing.foreign[:shown]) + (f" and {more} more" if more > 0 else "")
    count = len(listing.foreign)
    return f"{count} item{'s' if count > 1 else ''} not mmlora cache entries: {names}"


def cmd_cache(args) -> int:
    if args.action == "list":
        if args.older_than is not None or args.yes:
            raise MmloraError("--older-than and --yes go with `mmlora cache clear`.")
        print("\n".join(format_listing(found) for found in listings(args.which, args.scan_dir, args.vision_dir)))
        return 0
    return clear(listings(args.which, args.scan_dir, args.vision_dir), args.older_than, args.yes)


def clear(found: list[CacheListing], older_than: float | None, yes: bool) -> int:
    """Remove the listed entries (those unused for `older_than` days), after asking unless `yes`."""
    if older_than is not None and older_than < 0:
        raise MmloraError(f"--older-than {older_than:g}: give a number of days >= 0.")
    now = time.time()
    chosen, busy = [], 0
    for listing in found:
        for entry in listing.entries:
            if older_than is not None and now - entry.last_used < older_than * 86400 and not entry.leftover:
                continue
            if entry.busy:
                busy += 1
                continue
            chosen.append((listing, entry))
        if listing.foreign:
            print(f"{listing.kind} cache: left alone in {listing.root}: {foreign_summary(listing)}")
    if busy:
        print(f"left alone: {busy} entr{'y' if busy == 1 else 'ies'} being written by a running process")
    if not chosen:
        print("nothing to remove" + (f" (no entry unused for {older_than:g} days)" if older_than is not None else ""))
        return 0
    total = sum(entry.size for _, entry in chosen)
    roots = sorted({str(listing.root) for listing, _ in chosen})
    question = f"remove {len(chosen)} cache entries ({format_bytes(total)}) from {' and '.join(roots)}?"
    if not yes:
        if not sys.stdin.isatty():
            raise MmloraError(f"would {question[:-1]}; add --yes to remove them without asking "
                              "(mmlora asks only on a terminal).")
        try:
            reply = input(f"{question[0].upper()}{question[1:]} [y/N] ")
        except EOFError:
            reply = ""
        if reply.strip().lower() not in ("y", "yes"):
            print("nothing removed")
            return 1
    removed, failed = 0, []
    for _, entry in chosen:
        try:
            remove_entry(entry)
            removed += entry.size
        except OSError as error:
            failed.append(f"{entry.path} ({error.strerror})")
    print(f"removed {len(chosen) - len(failed)} cache entries, {format_bytes(removed)} freed")
    if failed:
        print(f"could not remove {len(failed)}: {'; '.join(failed)} (check the folder's permissions)", file=sys.stderr)
        return 1
    return 0
