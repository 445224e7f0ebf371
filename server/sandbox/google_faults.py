"""Fault injection for the Google emulator.

A fault matches requests by method and a path regex and fires for its next
``remaining`` matches (``None``: until cleared). Kinds:

* ``error``: answer with ``status`` (429, 403 ``rateLimitExceeded`` /
  ``userRateLimitExceeded``, 500, 503, ...) in Google's error shape, with an
  optional ``Retry-After``;
* ``latency``: sleep ``delay`` seconds, then serve normally (combines with others);
* ``slow_reply``: serve normally, then hold the answer ``delay`` seconds (a reply slow on
  its way back: the change is made, the caller learns of it late; combines with others);
* ``sync_gone``: a list call carrying ``syncToken`` answers 410 ``fullSyncRequired``;
* ``invalid_grant``: a refresh at the token endpoint answers ``invalid_grant``.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any

from server.sandbox import google_errors as errors
from server.sandbox.google_oauth import OAuthError

OAUTH_PATHS = re.compile(r"^/(o/oauth2/)?(token|revoke)$")
KINDS = ("error", "latency", "slow_reply", "sync_gone", "invalid_grant")


@dataclass
class Fault:
    kind: str = "error"
    status: int = 500
    reason: str | None = None
    message: str | None = None
    retry_after: float | None = None
    delay: float = 0.0
    path: str | None = None
    method: str | None = None
    remaining: int | None = 1
    hits: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {KINDS}")
        if self.path is None and self.kind == "sync_gone":
            self.path = r"/events$"
        if self.path is None and self.kind == "invalid_grant":
            self.path = OAUTH_PATHS.pattern

    def applies(self, method: str, path: str, args: Any, form: Any) -> bool:
        if self.remaining is not None and self.remaining <= 0:
            return False
        if self.method and self.method.upper() != method.upper():
            return False
        if self.path and not re.search(self.path, path):
            return False
        if self.kind == "sync_gone" and not args.get("syncToken"):
            return False
        if self.kind == "invalid_grant" and form.get("grant_type") != "refresh_token":
            return False
        return True

    def error(self, path: str) -> Exception:
        """The exception the HTTP layer turns into this fault's answer."""
        headers = {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(int(self.retry_after) if float(self.retry_after)
                                         .is_integer() else self.retry_after)
        if self.kind == "sync_gone":
            return errors.full_sync_required()
        if self.kind == "invalid_grant":
            return OAuthError(400, "invalid_grant", "Token has been expired or revoked.")
        if OAUTH_PATHS.search(path):
            name = "rate_limit_exceeded" if self.status == 429 else "internal_failure"
            exc = OAuthError(self.status, name, self.message or "Backend Error")
            exc.headers = headers  # type: ignore[attr-defined]
            return exc
        return errors.injected(self.status, self.reason, self.message, headers)


class Faults:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.items: list[Fault] = []

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.items.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.items.clear()

    def take(self, method: str, path: str, args: Any, form: Any) -> tuple[float, Fault | None, float]:
        """Consume the matching faults: latency before serving, the error to answer, and the
        delay of the reply after serving."""
        delay = reply_delay = 0.0
        failing = None
        with self._lock:
            for fault in self.items:
                timing = fault.kind in ("latency", "slow_reply")  # every match counts; only one error
                if (timing or failing is None) and fault.applies(method, path, args, form):
                    self._consume(fault)
                    if fault.kind == "latency":
                        delay += fault.delay
                    elif fault.kind == "slow_reply":
                        reply_delay += fault.delay
                    else:
                        failing = fault
        return delay, failing, reply_delay

    @staticmethod
    def _consume(fault: Fault) -> None:
        fault.hits += 1
        if fault.remaining is not None:
            fault.remaining -= 1
