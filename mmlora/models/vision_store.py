"""Where cached image features live: RAM up to a budget, and safetensors files on disk.

One entry is the features of one image under one key (models/vision_cache.py makes the keys).
Every entry is written to disk (one safetensors file each, so a restarted or resumed run, the
evaluation and the other ranks of a multi-process run find it) and kept in RAM while the RAM
budget lasts; past the budget, entries are read back from disk when needed. Nothing is pickled.

An entry on disk is trusted only when its header names the same key and namespace and the
blake2b digest of its tensor bytes matches the one written beside them: a truncated, corrupt
or foreign file is counted, deleted and recomputed. A file appears under its final name only
complete (written to a temporary name, then renamed), so a run killed mid-write or two ranks
writing the same entry leave no partial file behind.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

SUBDIR = "vision-features"


def default_cache_dir() -> Path:
    """$MMLORA_VISION_CACHE_DIR when set, else $XDG_CACHE_HOME/mmlora/vision-features, i.e.
    ~/.cache/mmlora/vision-features by default (used when train.vision_cache_dir is unset)."""
    if os.environ.get("MMLORA_VISION_CACHE_DIR"):
        return Path(os.environ["MMLORA_VISION_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "mmlora" / SUBDIR


def tensor_bytes(tensor) -> memoryview:
    """The raw bytes of a tensor (any dtype, bf16 included), without a copy when contiguous on CPU."""
    import torch

    flat = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
    return memoryview(flat.cpu().numpy())


def digest_tensors(tensors: dict) -> str:
    """blake2b over the names, dtypes, shapes and bytes of `tensors`, in name order."""
    hasher = hashlib.blake2b(digest_size=20)
    for name in sorted(tensors):
        tensor = tensors[name]
        hasher.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        hasher.update(tensor_bytes(tensor))
    return hasher.hexdigest()


@dataclass
class StoreStats:
    hits_ram: int = 0
    hits_disk: int = 0
    misses: int = 0
    rejected: int = 0
    """Disk entries found unreadable or not matching their key/digest (then recomputed)."""
    ram_bytes: int = 0
    disk_bytes: int = 0
    """Bytes this process wrote to disk."""
    entries: int = 0
    """Entries this process stored."""
    uncached_calls: int = 0
    """get_image_features calls whose arguments the family's layout does not describe (run as is)."""


@dataclass
class FeatureStore:
    """Per-image feature tensors by key: RAM first (up to `memory_budget` bytes), disk always."""

    directory: Path | None
    """Folder of this namespace's entries; None keeps everything in RAM (and past the budget, nothing)."""
    namespace: str
    memory_budget: int
    stats: StoreStats = field(default_factory=StoreStats)
    _ram: dict = field(default_factory=dict)

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> dict | None:
        """The stored tensors of `key` (on CPU), or None when absent or not trustworthy."""
        if key in self._ram:
            self.stats.hits_ram += 1
            return self._ram[key]
        tensors = self._read(key) if self.directory is not None else None
        if tensors is None:
            self.stats.misses += 1
            return None
        self.stats.hits_disk += 1
        self._keep(key, tensors)
        return tensors

    def put(self, key: str, tensors: dict) -> None:
        """Store `tensors` (detached CPU tensors) under `key`: on disk, and in RAM if it fits."""
        self.stats.entries += 1
        self._keep(key, tensors)
        if self.directory is not None:
            self._write(key, tensors)

    def _keep(self, key: str, tensors: dict) -> None:
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        if self.stats.ram_bytes + size <= self.memory_budget:
            self._ram[key] = tensors
            self.stats.ram_bytes += size

    def _write(self, key: str, tensors: dict) -> None:
        from safetensors.torch import save_file

        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        partial = final.with_name(f".{final.name}.{os.getpid()}.partial")
        metadata = {"mmlora_key": key, "mmlora_namespace": self.namespace, "blake2b": digest_tensors(tensors)}
        save_file({name: t.contiguous() for name, t in tensors.items()}, str(partial), metadata=metadata)
        os.replace(partial, final)  # atomic: readers see the whole file or none
        self.stats.disk_bytes += final.stat().st_size

    def _read(self, key: str) -> dict | None:
        from safetensors import safe_open

        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}
            trusted = (metadata.get("mmlora_key") == key and metadata.get("mmlora_namespace") == self.namespace
                       and metadata.get("blake2b") == digest_tensors(tensors))
        except Exception as error:  # safetensors raises its own types for truncated/garbled headers
            log.warning("vision cache: unreadable entry %s (%s); recomputing it", path, error)
            trusted = False
        if trusted:
            return tensors
        self.stats.rejected += 1
        log.warning("vision cache: entry %s does not match its key or checksum; recomputing it", path)
        path.unlink(missing_ok=True)
        return None
