"""not_a_file says what a path is both for code (`kind`) and for messages (str, unchanged
wording): callers decide on the kind, never on the message text."""

import os

import pytest

from mmlora.data.pathkinds import (DANGLING_LINK, FOLDER, INVALID, LINK_LOOP, MISSING, SPECIAL, PathProblem,
                                   not_a_file)


@pytest.mark.parametrize("make, kind, text", [
    (lambda p: p.mkdir(), FOLDER, "is a folder, not a file"),
    (os.mkfifo, SPECIAL, "is a named pipe (FIFO), not a regular file"),
    (lambda p: os.symlink(p, p), LINK_LOOP, "is a symbolic link loop (the link points back to itself)"),
    (lambda p: os.symlink("gone.png", p), DANGLING_LINK, "is a symbolic link to 'gone.png', which does not exist"),
    (lambda p: None, MISSING, "does not exist"),
])
def test_each_kind_of_path_has_its_kind_and_its_words(tmp_path, make, kind, text):
    path = tmp_path / "x.png"
    make(path)
    problem = not_a_file(path)
    assert problem == PathProblem(kind, text) and str(problem) == text and f"'{path}' {problem}".endswith(text)


def test_invalid_paths_and_parts_that_are_files(tmp_path):
    (tmp_path / "file").write_text("x")
    assert not_a_file(tmp_path / "file") is None
    assert not_a_file(tmp_path / "file" / "x.png") == PathProblem(
        MISSING, "does not exist (a part of the path is a file, not a folder)")
    assert not_a_file(tmp_path / "a\0b").kind == INVALID
    assert not_a_file(tmp_path / ("n" * 300)).kind == INVALID
