"""What a path that is not a readable regular file actually is, for error messages.

"not found" is wrong for a folder, a named pipe (reading it would wait forever), a device, a
socket, a symbolic-link loop or a link to nothing: each says what to fix.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PathProblem:
    """Why a path is not a readable regular file: `kind` for code to decide on (one of the
    constants below), `text` for the message ("is a folder, not a file"); str() gives the text."""

    kind: str
    text: str

    def __str__(self) -> str:
        return self.text


MISSING = "missing"  # nothing there (a dangling link is DANGLING_LINK)
DANGLING_LINK = "dangling_link"
LINK_LOOP = "link_loop"
INVALID = "invalid"  # not a path the system accepts (a NUL character, a name too long)
UNREADABLE = "unreadable"
FOLDER = "folder"
SPECIAL = "special"  # a named pipe, socket, device or other non-regular file


def not_a_file(path: Path) -> PathProblem | None:
    """None for a regular file (after following links), else what the path is, e.g.
    "is a folder, not a file" (kind FOLDER) or "does not exist" (kind MISSING)."""
    try:
        mode = os.stat(path).st_mode
    except ValueError:  # os.stat refuses a NUL character before asking the system
        return PathProblem(INVALID, "is not a valid path (it contains a NUL character)")
    except OSError as err:
        if err.errno == errno.ELOOP:
            return PathProblem(LINK_LOOP, "is a symbolic link loop (the link points back to itself)")
        if os.path.islink(path):
            return PathProblem(DANGLING_LINK, f"is a symbolic link to '{os.readlink(path)}', which does not exist")
        if err.errno == errno.EACCES:
            return PathProblem(UNREADABLE, "cannot be read (permission denied)")
        if err.errno == errno.ENAMETOOLONG:
            return PathProblem(INVALID, "is not a valid path (a name in it is too long for the file system)")
        if err.errno == errno.ENOTDIR:
            return PathProblem(MISSING, "does not exist (a part of the path is a file, not a folder)")
        return PathProblem(MISSING, "does not exist")
    if stat.S_ISREG(mode):
        return None if os.access(path, os.R_OK) else PathProblem(UNREADABLE, "cannot be read (permission denied)")
    if stat.S_ISDIR(mode):
        return PathProblem(FOLDER, "is a folder, not a file")
    if stat.S_ISFIFO(mode):
        return PathProblem(SPECIAL, "is a named pipe (FIFO), not a regular file")
    if stat.S_ISSOCK(mode):
        return PathProblem(SPECIAL, "is a socket, not a regular file")
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return PathProblem(SPECIAL, "is a device, not a regular file")
    return PathProblem(SPECIAL, "is not a regular file")
