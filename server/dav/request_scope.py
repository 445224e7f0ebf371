"""Per-request memory for the embedded Radicale: one lookup of each principal per request.

Radicale asks the rights plugin once per item in a PROPFIND; without this every
ask would open a transaction. The scope is opened and closed by ``DavGuard``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any, Callable

_local = threading.local()


@contextlib.contextmanager
def request_scope() -> Iterator[None]:
    _local.cache = {}
    try:
        yield
    finally:
        _local.cache = None


def remembered(key: Any, compute: Callable[[], Any]) -> Any:
    """``compute()`` once per request and key; outside a request, every time."""
    cache = getattr(_local, "cache", None)
    if cache is None:
        return compute()
    if key not in cache:
        cache[key] = compute()
    return cache[key]
