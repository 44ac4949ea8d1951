"""Shipped copies of the published non-weight files of the checkpoints the real recipes use.

`assets/published/<org>--<name>/` holds a checkpoint's config.json, preprocessor and processor
configs, tokenizer settings, chat template and generation config, as the Hugging Face hub
publishes them (assets/published/README.md says where each came from). They let `mmlora plan`
work on a machine that has neither the checkpoint nor the network, and they are the fixtures the
tests read to exercise the published file formats.

Lookup order, so a user's files always win: a local directory or the hub cache first, the hub
itself when it can be reached, and the shipped copy only when none of those has the config.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmlora.config.paths import assets_dir
from mmlora.config.schema import ModelConfig
from mmlora.errors import MmloraError


def published_root() -> Path:
    """The folder of shipped published checkpoint files (mmlora.assets/published)."""
    return assets_dir() / "published"


def published_dir(model_id: str) -> Path | None:
    """The shipped folder for hub id `org/name`, or None when mmlora ships none for it."""
    if model_id.count("/") != 1:
        return None
    folder = published_root() / model_id.replace("/", "--")
    return folder if (folder / "config.json").is_file() else None


def published_ids() -> list[str]:
    """Every hub id with shipped published files, sorted."""
    return sorted(p.parent.name.replace("--", "/", 1) for p in published_root().glob("*/config.json"))


@dataclass
class ConfigSource:
    """A checkpoint's config and the folder or id its other files are read from."""

    config: Any
    source: str
    """What to pass to from_pretrained for the processor files (a directory or a hub id)."""
    published: Path | None = None
    """The shipped folder when the config came from mmlora's copy instead of a checkpoint."""


def resolve_config(cfg: ModelConfig) -> ConfigSource:
    """The config of `cfg.name` from the checkpoint (local directory, hub cache, or the hub when
    reachable), else from the shipped published copy; without either, the checkpoint's error."""
    from transformers import AutoConfig

    from mmlora.models.loading import _source_dir, load_config

    try:
        return ConfigSource(load_config(cfg.name, cfg), _source_dir(cfg.name))
    except MmloraError:
        folder = None if Path(cfg.name).exists() else published_dir(cfg.name)
        if folder is None:
            raise
    return ConfigSource(AutoConfig.from_pretrained(folder), str(folder), published=folder)


def describe_source(source: ConfigSource, cfg: ModelConfig) -> str:
    """One line for `mmlora plan` saying where the config came from."""
    if source.published is None:
        return "config only, no weights read"
    revision = f"; model.revision={cfg.revision} is not checked" if cfg.revision else ""
    return (f"config from mmlora's shipped copy of the published checkpoint files, "
            f"assets/published/{source.published.name}: the hub id is not in the hub cache and the hub "
            f"could not be reached or refused access{revision}; no weights read")
