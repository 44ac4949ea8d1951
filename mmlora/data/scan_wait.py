"""The other ranks of a machine wait for the first one's scan, never forever and never silently.

Under multi-process training (LOCAL_WORLD_SIZE > 1) local rank 0 scans a split into a work folder
`KEY.XXXXXXXX` under the cache root and renames it to `KEY` when done (arrowscan.scan_arrow); the
other ranks wait for `KEY/scan.json`. Rank 0 touches its work folder every HEARTBEAT_S seconds
while it scans (`Heartbeat`), so the waiting ranks tell a slow scan from a stopped one:

- the result appears: they read it;
- a `KEY.serial` marker written by this launch appears: rank 0 scanned in one process (rows JSON
  cannot carry, or a result that could not be written); they do the same. A marker left by an
  earlier launch (another parent process) is not theirs and is ignored (`mark_serial`);
- the work folder they saw being written is gone with neither (rank 0 raised or gave up), or no
  work folder of the key changed for STALE_S seconds (rank 0 was killed, hangs, never started, or
  scans without the cache): one warning line, then each scans the split itself without the
  cache. Data that made rank 0 fail makes them fail with the same one-line error.

While they wait they log a line every PROGRESS_S seconds saying what they wait for (shown
without --verbose on local rank 1: one line per machine).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
from pathlib import Path

from mmlora.data.cache_entries import is_recent

log = logging.getLogger(__name__)
HEARTBEAT_S = 10.0
"""How often the scanning rank touches its work folder."""
STALE_S = 180.0
"""A work folder unchanged for this long belongs to a rank that stopped (many heartbeats missed)."""
PROGRESS_S = 60.0
"""How often a waiting rank says it still waits."""
POLL_S = 0.5


def launch_id() -> str:
    """What the ranks of one launch on one machine share: the machine and their parent process
    (torchrun's or accelerate's agent, deepspeed's launcher, slurmstepd)."""
    return f"launch {socket.gethostname()} {os.getppid()}"


def serial_marker(final: Path) -> Path:
    return final.with_suffix(".serial")


def mark_serial(final: Path) -> None:
    """Tells the other ranks of this launch that the split at `final` was scanned in one process
    (they scan it so too). Raises OSError when it cannot be written (they notice rank 0 stopped)."""
    serial_marker(final).write_text(launch_id())


def marked_serial(final: Path) -> bool:
    """Whether this launch's first rank wrote the `.serial` marker of `final`."""
    try:
        return serial_marker(final).read_text() == launch_id()
    except OSError:
        return False


class Heartbeat:
    """A thread touching `folder` every `every` seconds until stopped (or the folder is gone)."""

    def __init__(self, folder: Path, every: float | None = None):
        self.folder, self.every, self._stop = folder, HEARTBEAT_S if every is None else every, threading.Event()
        self._thread = threading.Thread(target=self._beat, name="mmlora-scan-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            try:
                os.utime(self.folder)
            except OSError:  # renamed to the result, or removed: nothing left to signal
                return


def work_folders(final: Path) -> dict[str, float]:
    """Modification time of each work folder `KEY.XXXXXXXX` of `final` (a scan being written)."""
    found = {}
    try:
        items = list(os.scandir(final.parent))
    except OSError:
        return found
    prefix = final.name + "."
    for item in items:
        if item.name.startswith(prefix) and item.name != serial_marker(final).name:
            try:
                if item.is_dir(follow_symlinks=False):
                    found[item.name] = item.stat(follow_symlinks=False).st_mtime
            except OSError:  # removed meanwhile
                continue
    return found


def remove_leftovers(final: Path) -> None:
    """Deletes the work folders of `final` that no process has written for IN_PROGRESS_SECONDS (a
    killed run's unfinished scan: never read, only taking space), as `mmlora cache clear` would."""
    for name, mtime in work_folders(final).items():
        if not is_recent(mtime):
            shutil.rmtree(final.parent / name, ignore_errors=True)


def wait_for_first_process(final: Path, name: str, read) -> tuple[bool, object]:
    """Wait for local rank 0's result at `final` (module docstring). `read()` returns the result
    or None while there is none. (True, result) when it came, (True, None) when rank 0 scanned in
    one process, (False, None) when rank 0 stopped without either (warned here): scan yourself."""
    log.info("%s data: waiting for the first process's scan (%s)", name, final)
    started = last_alive = last_note = time.monotonic()
    alive: set[str] = set()  # work folders seen being written
    # Shown by default (a warning) on the second process only: one line a minute per machine.
    level = logging.WARNING if os.environ.get("LOCAL_RANK") == "1" else logging.INFO
    while True:
        folders = work_folders(final)  # listed before the result is read: a rename is seen as the result
        found = read()
        if found is not None:
            return True, found
        if marked_serial(final):
            return True, None
        now = time.monotonic()
        fresh = {f for f, mtime in folders.items() if time.time() - mtime < STALE_S}
        if fresh:
            alive |= fresh
            last_alive = now
        why = _stopped(final, alive, folders, now - last_alive)
        if why:
            log.warning("%s data: the first process stopped scanning without a result (%s); this process scans the "
                        "data itself, without the cache (an error of the first process is in its own log)", name, why)
            return False, None
        if now - last_note >= PROGRESS_S:
            last_note = now
            sign = "its work folder is being written" if fresh else f"no sign of it for {now - last_alive:.0f} s"
            log.log(level, "%s data: still waiting for the first process's scan (%s) after %.0f s (%s)",
                    name, final, now - started, sign)
        time.sleep(POLL_S)


def _stopped(final: Path, alive: set[str], folders: dict[str, float], silent_s: float) -> str | None:
    """Why the first process is taken to have stopped, or None while it may still be scanning."""
    if alive and not alive & folders.keys():
        return f"its work folder {final.parent / sorted(alive)[0]} is gone"
    if silent_s > STALE_S:
        return f"no work folder {final}.* changed for {STALE_S:g} s"
    return None
