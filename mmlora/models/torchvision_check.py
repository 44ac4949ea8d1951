"""An installed torchvision that cannot be imported counts as absent, for mmlora and transformers.

transformers decides whether torchvision is available from the installed files alone
(`importlib.util.find_spec`), then imports it from its image processors. A torchvision built for
another torch (a CUDA wheel next to a CPU torch, or one release apart) fails that import with
"operator torchvision::nms does not exist", and every `AutoImageProcessor` / `AutoProcessor`
call fails with it. Every family's image processor also has a PIL backend, so mmlora hides such
a torchvision (one log line) and goes on without it. This must run before transformers first
asks, yet not at `import mmlora`: trying torchvision imports torch, and `--gpu` must set
CUDA_VISIBLE_DEVICES before that. So `mmlora/__init__.py` calls `check_before_transformers`,
which runs the check when transformers is first imported.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import sys

log = logging.getLogger(__name__)


def _forget_partial_import() -> None:
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]


def torchvision_usable() -> bool:
    """True when torchvision imports; an installed one that fails to import is hidden (a None
    entry in sys.modules makes `find_spec` and `import` treat it as missing) and False returned."""
    if "torchvision" in sys.modules:
        return sys.modules["torchvision"] is not None
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        import torchvision  # noqa: F401
    except Exception as err:  # noqa: BLE001 - any failure (RuntimeError for missing ops) means unusable
        _forget_partial_import()
        sys.modules["torchvision"] = None
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        log.warning("mmlora: torchvision is installed but does not import (%s); going on without it "
                    "(PIL image processing). Install the torchvision release built for your torch to use it.",
                    reason)
        return False
    return True


class _CheckOnTransformersImport(importlib.abc.MetaPathFinder):
    """Runs `torchvision_usable` when transformers is first looked up, then steps aside (finds
    nothing itself, so the ordinary finders import transformers)."""

    def find_spec(self, name, path=None, target=None):
        if name == "transformers":
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            torchvision_usable()
        return None


def check_before_transformers() -> None:
    """Arrange for `torchvision_usable` to run before transformers is imported (at once if it
    already is). Costs nothing where torchvision is not installed."""
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is None:
        return
    if "transformers" in sys.modules:
        torchvision_usable()
    elif not any(isinstance(finder, _CheckOnTransformersImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _CheckOnTransformersImport())
