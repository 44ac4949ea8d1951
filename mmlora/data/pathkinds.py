"""What a path that is not a readable regular file actually is, for error messages.

"not found" is wrong for a folder, a named pipe (reading it would wait forever), a device, a
socket, a symbolic-link loop or a link to nothing: each says what to fix.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


def not_a_file(path: Path) -> str | None:
    """None for a regular file (after following links), else what the path is, e.g.
    "is a folder, not a file" or "does not exist"."""
    try:
        mode = os.stat(path).st_mode
    except ValueError:  # os.stat refuses a NUL character before asking the system
        return "is not a valid path (it contains a NUL character)"
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "is a symbolic link loop (the link points back to itself)"
        if os.path.islink(path):
            return f"is a symbolic link to '{os.readlink(path)}', which does not exist"
        if err.errno == errno.EACCES:
            return "cannot be read (permission denied)"
        if err.errno == errno.ENAMETOOLONG:
            return "is not a valid path (a name in it is too long for the file system)"
        if err.errno == errno.ENOTDIR:
            return "does not exist (a part of the path is a file, not a folder)"
        return "does not exist"
    if stat.S_ISREG(mode):
        return None if os.access(path, os.R_OK) else "cannot be read (permission denied)"
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    if stat.S_ISFIFO(mode):
        return "is a named pipe (FIFO), not a regular file"
    if stat.S_ISSOCK(mode):
        return "is a socket, not a regular file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device, not a regular file"
    return "is not a regular file"
