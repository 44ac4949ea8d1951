"""Guards around the pre-scan's result cache (arrowscan.py): a damaged result is never trusted,
an unusable cache is never fatal.

- A result folder whose scan.json or Arrow files are cut short, garbage, missing or of another
  layout is logged in one line, deleted and scanned again (`read_or_discard`).
- A scan process killed mid-scan (out of memory) is a one-line error saying what to change
  (`killed_process_error`), not datasets' RuntimeError.
- A cache root that cannot be written (a read-only folder, $MMLORA_SCAN_CACHE naming a file, a
  full disk) makes the split scan without the cache, with one warning line naming the folder and
  the setting to change (`cache_usable`, `unwritable`).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

from mmlora.data.scan_wait import launch_id
from mmlora.data.scanstore import cache_root
from mmlora.errors import MmloraError

log = logging.getLogger(__name__)
FIX = "set $MMLORA_SCAN_CACHE to a writable folder, or data.scan_cache: false to scan without it"
warned: set[str] = set()
"""Cache roots already warned about in this process (one warning line each)."""


def damaged_errors() -> tuple[type[BaseException], ...]:
    """What reading a damaged result raises: cut or garbage JSON and Arrow, missing files or columns."""
    import pyarrow as pa

    return OSError, ValueError, KeyError, TypeError, IndexError, AttributeError, pa.ArrowException


def read_or_discard(folder: Path, read):
    """`read(folder)`, or None after logging and deleting the folder when its result is damaged."""
    try:
        check_meta(folder)
        return read(folder)
    except damaged_errors() as error:
        reason = f"{type(error).__name__}: {error}".splitlines()[0]
        shutil.rmtree(folder, ignore_errors=True)
        done = "deleted" if not folder.exists() else "could not delete it (delete it by hand)"
        log.warning("damaged scan result in %s (%s): %s, scanning again", folder, reason, done)
        return None


def check_meta(folder: Path) -> None:
    """Raises ValueError when scan.json is not what arrowscan writes (nothing when there is none):
    an object naming Arrow files of this folder, the images' identities and the expansion texts."""
    path = folder / "scan.json"
    if not path.is_file():
        return
    meta = json.loads(path.read_text())
    if not isinstance(meta, dict) or not {"files", "images", "expansions"} <= meta.keys():
        raise ValueError("scan.json lacks the files, images and expansions of a scan result")
    files = meta["files"]
    if not isinstance(files, list) or not all(isinstance(f, str) and f == Path(f).name for f in files):
        raise ValueError("scan.json names files outside its folder")
    if not isinstance(meta["images"], dict) or not isinstance(meta["expansions"], list):
        raise ValueError("scan.json has images or expansions of the wrong type")


def cache_usable(root: Path) -> bool:
    """Whether scan results can be written under `root` (created if need be); one warning line
    per root when not."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tempfile.mkdtemp(prefix=".probe.", dir=root))
        return True
    except OSError as error:
        warn_unwritable(root, error)
        return False


def warn_unwritable(root: Path, error: OSError) -> None:
    """One warning line: which folder failed, why, and what to change."""
    if str(root) not in warned:
        warned.add(str(root))
        reason = "not a folder" if root.exists() and not root.is_dir() else error.strerror or str(error)
        hint = FIX if is_cache(root) else "free space there or set $TMPDIR to another folder"
        log.warning("scan results cannot be written in %s (%s): scanning without the cache; %s", root, reason, hint)


def is_cache(folder: Path) -> bool:
    return Path(folder) == cache_root()


def unwritable(root: Path, error: OSError, serial_marker: Path | None) -> None:
    """A scan result could not be written (a full disk, a folder gone read-only): warn once, and
    tell the other processes of this machine waiting for it (`serial_marker`) to scan themselves."""
    warn_unwritable(root, error)
    if serial_marker is not None:
        try:
            serial_marker.write_text(launch_id())  # this launch's (scan_wait.marked_serial)
        except OSError:  # the waiting processes notice the first one stopped (scan_wait)
            pass


def killed_process_error(error: RuntimeError, source) -> MmloraError | None:
    """The one-line error for datasets' map losing one of its processes (killed, most often for
    lack of memory), or None for another RuntimeError."""
    if "subprocesses has abruptly died" not in str(error):
        return None
    return MmloraError(f"{source}: a scan process was killed before the scan ended (out of memory?); "
                       "set data.num_proc lower (fewer processes use less memory) and run again")
