"""A Lockstep server wired to the Google emulator, and a tech connected through the real consent flow."""

from __future__ import annotations

import time
from typing import Any, Callable

import requests

from server.sandbox.google import GoogleSandbox
from tests.support.lockstep_server import LockstepServer


def google_env(google: GoogleSandbox, **extra: str) -> dict[str, str]:
    return {**google.lockstep_env(), **extra}


def connect_google(server: LockstepServer, google: GoogleSandbox, user: str) -> None:
    """``lockstep connect google USER`` → the link → consent (approved) → callback."""
    google.add_user(f"{user}@example.com")
    link = server.cli("connect", "google", user).stdout.strip().splitlines()[-1]
    consent = requests.get(link, allow_redirects=False).headers["Location"]
    back = requests.get(consent + "&sandbox_consent=approve", allow_redirects=False).headers["Location"]
    done = requests.get(back, allow_redirects=False)
    assert done.status_code == 200, done.text


def eventually(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)
