"""Import of optional back end libraries with a clear message when missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingDependencyError


def require(module: str, package: str | None = None, codec: str | None = None) -> ModuleType:
    """Import ``module`` or raise MissingDependencyError naming the pip package."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pkg = package or module
        who = f"codec {codec!r}" if codec else "this feature"
        raise MissingDependencyError(
            f"{who} needs the Python package {pkg!r}, which is not installed "
            f"or failed to import ({exc}); install it with: pip install {pkg}"
        ) from None
