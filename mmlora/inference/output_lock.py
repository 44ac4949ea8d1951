"""One `mmlora infer` at a time per answers file: two runs appending to the same `--output`
would interleave their lines (and each would answer what the other is answering).

The lock is `fcntl.flock` on `<output>.lock`, held while the run lasts. The kernel releases it
when the process ends, however it ends (killed included), so a stale lock cannot block the
next run; the file itself stays (removing it would let a third run lock a new file while the
second still holds the old one).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from mmlora.errors import MmloraError


def lock_path(output: Path) -> Path:
    return output.with_name(output.name + ".lock")


class OutputLock:
    """An exclusive lock on `output` for this process; `release()` (or the process's end) frees it."""

    def __init__(self, output: Path):
        path = lock_path(output)
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise MmloraError(f"--output {output}: its lock file {path} cannot be made ({err.strerror or err}); "
                              "choose another --output.") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip()
            os.close(self._fd)
            by = f" (process {holder})" if holder.isdigit() else ""
            raise MmloraError(f"--output {output} is being written by another `mmlora infer`{by}; wait for it to "
                              "end (then --resume), or choose another --output.") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)  # who holds it, for the message above

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor releases the flock
            self._fd = None
