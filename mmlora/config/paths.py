"""Where shipped recipes and assets live, and how recipe paths resolve."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from mmlora.errors import MmloraError

ASSET_SCHEME = "asset://"


def assets_dir() -> Path:
    """The `assets/` folder shipped inside the package (mmlora.assets)."""
    return Path(str(importlib.resources.files("mmlora.assets")))


def recipes_dir() -> Path:
    """The `recipes/` folder shipped inside the package (mmlora.recipes)."""
    return Path(str(importlib.resources.files("mmlora.recipes")))


def shipped_recipes() -> list[Path]:
    """Every shipped recipe file, sorted by name."""
    return sorted(recipes_dir().glob("*.yaml"))


def resolve_recipe_path(name_or_path: str | Path) -> Path:
    """A recipe file path, or the name of a shipped recipe (with or without `.yaml`)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    stem = path.name.removesuffix(".yaml")
    shipped = recipes_dir() / f"{stem}.yaml"
    if shipped.is_file() and path.parent == Path("."):
        return shipped
    names = ", ".join(p.stem for p in shipped_recipes())
    raise MmloraError(f"Recipe '{name_or_path}' not found: give a YAML file or one of: {names}.")


def resolve_data_path(value: str) -> Path:
    """`asset://demo/x.jsonl` -> the shipped file; anything else is a path from the current directory."""
    if value.startswith(ASSET_SCHEME):
        return assets_dir() / value[len(ASSET_SCHEME):]
    return Path(value).expanduser()
