"""Calendar providers behind one interface (base.py); the registry imports them lazily by name."""

from __future__ import annotations

import importlib
from typing import Any

from server.providers.base import Provider

# name -> "module:Class"; providers are added here as they are built (google, microsoft, caldav).
_REGISTRY: dict[str, str] = {
    "google": "server.providers.google:GoogleProvider",
    "microsoft": "server.providers.microsoft:MicrosoftProvider",
    "caldav": "server.providers.caldav_remote:CalDAVProvider",
}


def provider_class(name: str) -> type[Provider]:
    """The provider class registered under ``name`` (imported on first use)."""
    try:
        module_name, class_name = _REGISTRY[name].split(":")
    except KeyError:
        raise LookupError(f"no provider named {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None
    module: Any = importlib.import_module(module_name)
    return getattr(module, class_name)  # type: ignore[no-any-return]
