"""The one exception type users see: the CLI prints its message on one line, no traceback."""


class MmloraError(Exception):
    """A problem the user can fix (bad recipe, missing file, unreachable hub, ...).

    The message says what is wrong and what to do next.
    """
