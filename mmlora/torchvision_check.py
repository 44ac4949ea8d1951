"""An installed torchvision that cannot be imported counts as absent, for mmlora and transformers.

transformers decides whether torchvision is available from the installed files alone
(`importlib.util.find_spec`), then imports it from its image processors. A torchvision built for
another torch (a CUDA wheel next to a CPU torch, or one release apart) fails that import with
"operator torchvision::nms does not exist", and every `AutoImageProcessor` / `AutoProcessor`
call fails with it. Every family's image processor also has a PIL backend, so mmlora hides such
a torchvision (one log line) and goes on without it. This must run before transformers first
asks, which is why `mmlora/__init__.py` calls it.
"""

from __future__ import annotations

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
