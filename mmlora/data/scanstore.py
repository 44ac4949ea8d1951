"""Where a scanned split lives on disk, and how its samples come back one at a time.

A scan result is a folder of Arrow files (arrowscan.py writes them), one record per data row,
read memory-mapped: `ArrowSamples` builds the Sample a training step asks for from its record,
so a split of a million rows costs the process a few arrays of numbers, not a million Python
objects, and its images stay references (paths, or bytes inside the memory-mapped file).

The folder's name is a fingerprint of everything the result depends on (see `fingerprint`),
under the cache root (`cache_root`: $MMLORA_SCAN_CACHE, else $XDG_CACHE_HOME/mmlora/scan, else
~/.cache/mmlora/scan), so an unchanged split is read back instead of scanned again.
"""

from __future__ import annotations

import array
import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from mmlora.data.samples import Sample
from mmlora.errors import MmloraError

SCAN_FORMAT = 1
"""Bumped when the layout of a scan result or what a scan measures changes."""
TUPLES = "\0tuples"
SAMPLE_FIELDS = tuple(f.name for f in dataclasses.fields(Sample))
"""Every field a stored sample carries (looked up once: the scan stores every sample)."""
"""Key of the list of a stored sample's fields that were tuples."""
NOT_IN_FINGERPRINT = ("train", "eval", "num_proc", "scan_cache", "packing", "group_by_length")
"""Data fields that do not change what a scan finds (the split's own files are fingerprinted by
identity; how many processes scanned changes nothing)."""


def cache_root() -> Path:
    """$MMLORA_SCAN_CACHE, else $XDG_CACHE_HOME/mmlora/scan, else ~/.cache/mmlora/scan."""
    if os.environ.get("MMLORA_SCAN_CACHE"):
        return Path(os.environ["MMLORA_SCAN_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "mmlora" / "scan"


def file_identity(path: Path) -> list:
    """[path, size, mtime_ns] of a data file, or of every file directly in a data folder."""
    path = Path(os.path.abspath(path))
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    return [[str(f), *file_stat(f)] for f in files]


def file_stat(path: Path) -> list[int]:
    """[size, mtime_ns] of a file or folder ([-1, -1] when it is gone)."""
    try:
        info = os.stat(path)
    except OSError:
        return [-1, -1]
    return [info.st_size, info.st_mtime_ns]


def processor_identity(processor) -> str:
    """A hash of what token counts depend on: chat template, vocabulary and added tokens, image
    processor settings, the model's config, the family and mmlora's version."""
    import mmlora

    digest = hashlib.sha256()
    tokenizer = processor.tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    parts = [mmlora.__version__, processor.family.name, processor.chat_template or "",
             backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items())),
             processor.image_processor.to_json_string()]
    if processor.model_config is not None:
        parts.append(processor.model_config.to_json_string())
    for part in parts:
        digest.update(part.encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()


def fingerprint(source, cfg, processor_hash: str, name: str, expand_captions: bool, bounds=None) -> str:
    """The cache key of one split's scan: its files' identity (path, size, mtime), the recipe's
    data fields (those in NOT_IN_FINGERPRINT aside), the processor, how it is expanded, and the
    pixel bounds of its recipe entry (a mixture's source; its samples carry them)."""
    fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_IN_FINGERPRINT}
    key = json.dumps({"format": SCAN_FORMAT, "source": os.path.abspath(source), "files": file_identity(Path(source)),
                      "data": fields,
                      "processor": processor_hash, "split": name, "expand": expand_captions, "bounds": bounds},
                     sort_keys=True, default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def images_unchanged(recorded: dict[str, list[int]]) -> bool:
    """Every image file (and image folder) recorded at scan time still has its size and mtime:
    a replaced, added or removed image makes the split scan again."""
    return all(file_stat(Path(path)) == list(identity) for path, identity in recorded.items())


def encode_sample(sample: Sample, blobs: list[bytes]) -> dict:
    """A Sample as JSON-able data, every field carried; image bytes go to `blobs` (by index)."""
    data = {name: getattr(sample, name) for name in SAMPLE_FIELDS}
    data["images"] = [_encode_image(ref, blobs) for ref in sample.images]
    data[TUPLES] = [name for name, value in data.items() if isinstance(value, tuple)]  # JSON has lists only
    return data


def _encode_image(ref, blobs: list[bytes]) -> dict:
    if isinstance(ref, Path):
        return {"path": str(ref)}
    if isinstance(ref, str):
        return {"url": ref}
    if isinstance(ref, (bytes, bytearray)):
        blobs.append(bytes(ref))
        return {"blob": len(blobs) - 1}
    raise MmloraError(f"cannot store an image of type {type(ref).__name__} in a scan result")


def decode_sample(data: dict, blobs: list[bytes]) -> Sample:
    """The Sample `encode_sample` stored."""
    images = [Path(ref["path"]) if "path" in ref else ref["url"] if "url" in ref else blobs[ref["blob"]]
              for ref in data["images"]]
    fields = {name: tuple(value) if name in data[TUPLES] else value for name, value in data.items() if name != TUPLES}
    return Sample(**{**fields, "images": images})


def read_arrow(files: list[Path]):
    """The Arrow stream files of a scan result as one memory-mapped pyarrow Table."""
    import pyarrow as pa

    tables = []
    for path in files:
        with pa.memory_map(str(path)) as source:
            tables.append(pa.ipc.open_stream(source).read_all())
    return pa.concat_tables(tables)


class ArrowSamples(Sequence):
    """The usable samples of a scanned split, each built from its memory-mapped row on access.

    Sample i is the `positions[i]`-th usable sample of row `rows[i]` (a row's "samples" column
    holds its usable samples as JSON, its "blobs" column the bytes of images stored inline).

    The files are mapped when the samples are made, so DataLoader workers forked later share that
    mapping even if the result is deleted or replaced meanwhile (`mmlora cache clear`, another run
    scanning the split again). A copy that reopens them (a spawned worker) first checks they are
    still the files it was made from; a file gone, replaced or garbled is a one-line MmloraError
    naming the result and what to do, never a traceback or another scan's sample."""

    def __init__(self, files: list[Path], rows: array.array, positions: array.array):
        self.files, self.rows, self.positions = list(files), rows, positions
        self.identity = [_identity(path) for path in self.files]
        self._table = self._open()

    def __getstate__(self):  # DataLoader workers reopen the memory-mapped files
        return {**self.__dict__, "_table": None}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if self._table is None:
            self._table = self._open()
        row, position = self.rows[index], self.positions[index]  # IndexError past the end: iteration stops
        try:
            samples = json.loads(self._table.column("samples")[row].as_py())
            blobs = self._table.column("blobs")[row].as_py() if any("blob" in ref for ref in
                                                                     samples[position]["images"]) else []
            return decode_sample(samples[position], blobs)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as error:  # a garbled stored sample
            raise self._damaged(f"its sample {index} cannot be read ({type(error).__name__}: {error})") from None

    def _open(self):
        import pyarrow as pa

        if [_identity(path) for path in self.files] != self.identity:
            raise self._damaged("its files were removed or replaced since it was read")
        try:
            return read_arrow(self.files)
        except (OSError, pa.ArrowException) as error:
            raise self._damaged(f"its files cannot be read ({type(error).__name__}: {error})") from None

    def _damaged(self, what: str) -> MmloraError:
        folder = self.files[0].parent if self.files else "?"
        return MmloraError(f"scan result {folder}: {what}".splitlines()[0] + "; run `mmlora cache clear scan` "
                           "and start again (the data is scanned anew)")


def _identity(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime_ns) of a file, None when it is gone."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns
