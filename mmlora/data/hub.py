"""Hub datasets (`hf:ORG/NAME[:CONFIG][@SPLIT]`) through `datasets.load_dataset`.

load_dataset resolves the id as it always does: a local folder of that name first (a hub
repository cloned or copied: data files plus a README.md whose YAML `configs:` names them), then
the hub, or its cache under HF_DATASETS_OFFLINE / HF_HUB_OFFLINE. Rows come back as stored:
`Image` columns stay `{"bytes", "path"}` and are checked like any image (mmlora/data/images.py).
"""

from __future__ import annotations

import os

from mmlora.config.sources import DataSource
from mmlora.errors import MmloraError


def _offline() -> bool:
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
               for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def load_hub_dataset(source: DataSource, streaming: bool = False):
    """`datasets.load_dataset(path, name, split=split, streaming=streaming)`; any failure is one
    MmloraError saying what was tried and what to do next."""
    import datasets

    tried = (f"datasets.load_dataset({source.path!r}{', ' + repr(source.name) if source.name else ''}, "
             f"split={source.split!r}{', streaming=True' if streaming else ''})")
    try:
        return datasets.load_dataset(source.path, source.name, split=source.split, streaming=streaming)
    except (ConnectionError, FileNotFoundError) as err:  # DatasetNotFoundError is a FileNotFoundError
        where = ("offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set) and not in the datasets cache"
                 if _offline() else "neither a local folder nor reachable on the hub")
        raise MmloraError(
            f"{source.label}: hub dataset {source.display} is {where}; tried {tried} "
            f"({_first_line(err)}). Load it once while online (it is then cached), or download it "
            f"(`hf download --repo-type dataset {source.path} --local-dir DIR`) and give data.train=hf:DIR "
            "or the folder of its Parquet files.") from None
    except ValueError as err:  # an unknown config or split: datasets lists the ones there are
        raise MmloraError(f"{source.label}: {tried} refused: {_first_line(err)}. Fix the :CONFIG / @SPLIT "
                          "part of the id.") from None
    except Exception as err:  # noqa: BLE001 - datasets raises many types for broken repositories
        raise MmloraError(f"{source.label}: {tried} failed ({type(err).__name__}: {_first_line(err)}).") from None


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0].rstrip(".")
