"""Emulators of the calendar providers and their OAuth servers.

Used by the tests, the benchmarks and ``lockstep demo``; nothing else in the
server imports this package. The Google emulator lives in
:mod:`server.sandbox.google` (``GoogleSandbox``), the Microsoft Graph + identity
platform emulator in :mod:`server.sandbox.graph` (``GraphSandbox``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["GoogleSandbox", "GraphSandbox"]


def __getattr__(name: str) -> Any:
    # Imported lazily so that using one emulator does not load the others.
    if name == "GoogleSandbox":
        from server.sandbox.google import GoogleSandbox

        return GoogleSandbox
    if name == "GraphSandbox":
        from server.sandbox.graph import GraphSandbox

        return GraphSandbox
    raise AttributeError(name)
