"""The one exception type users see: the CLI prints its message on one line, no traceback."""


class MmloraError(Exception):
    """A problem the user can fix (bad recipe, missing file, unreachable hub, ...).

    The message says what is wrong and what to do next.
    """


def is_pickle_refusal(err: BaseException) -> bool:
    """True when `err` is torch.load(weights_only=True) refusing a file that holds pickled Python
    objects besides tensors (torch raises it as an UnpicklingError or RuntimeError whose message
    starts "Weights only load failed"); the one place that reads torch's wording."""
    return "weights only load failed" in str(err).lower()
