"""Emulators of the calendar providers and their OAuth servers.

Used by the tests, the benchmarks and ``lockstep demo``; nothing else in the
server imports this package. The Google emulator lives in
:mod:`server.sandbox.google` (``GoogleSandbox``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["GoogleSandbox"]


def __getattr__(name: str) -> Any:
    # Imported lazily so that using one emulator does not load the others.
    if name == "GoogleSandbox":
        from server.sandbox.google import GoogleSandbox

        return GoogleSandbox
    raise AttributeError(name)
