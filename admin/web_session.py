"""The panel's session cookie: signed with a key derived from the server secret, scoped to /admin.

HttpOnly, SameSite=Lax, and Secure whenever the request arrived over HTTPS
(TLS on the server itself, or ``X-Forwarded-Proto: https`` when
``trust_forwarded`` is on: the dispatcher has then already set the scheme).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from functools import wraps
from typing import Any, Callable

from flask import Flask, redirect, request, session, url_for
from flask.sessions import SecureCookieSessionInterface
from itsdangerous import URLSafeTimedSerializer

COOKIE_NAME = "lockstep_admin"
COOKIE_PATH = "/admin"
MAX_AGE_SECONDS = 12 * 3600


def derive_key(secret_key: str, purpose: str) -> str:
    """A key for one purpose only, so a leaked session key says nothing about the key ring."""
    return hmac.new(secret_key.encode(), f"lockstep admin {purpose}".encode(), hashlib.sha256).hexdigest()


class AdminSessionInterface(SecureCookieSessionInterface):
    salt = "lockstep-admin-session"

    def __init__(self, key: str) -> None:
        self._key = key

    def get_signing_serializer(self, app: Flask) -> URLSafeTimedSerializer | None:
        return URLSafeTimedSerializer(self._key, salt=self.salt, serializer=self.serializer,
                                      signer_kwargs={"key_derivation": self.key_derivation,
                                                     "digest_method": self.digest_method})

    def get_cookie_name(self, app: Flask) -> str:
        return COOKIE_NAME

    def get_cookie_path(self, app: Flask) -> str:
        return COOKIE_PATH

    def get_cookie_httponly(self, app: Flask) -> bool:
        return True

    def get_cookie_samesite(self, app: Flask) -> str | None:
        return "Lax"

    def get_cookie_secure(self, app: Flask) -> bool:
        return request.is_secure


def start(username: str) -> None:
    """A fresh session for a successful login (nothing from before survives: no fixation)."""
    session.clear()
    session["admin"] = username
    session["since"] = int(time.time())


def current_admin() -> str | None:
    name = session.get("admin")
    since = session.get("since", 0)
    if not name or time.time() - since > MAX_AGE_SECONDS:
        return None
    return str(name)


def login_required(view: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if current_admin() is None:
            session.clear()
            return redirect(url_for("admin.login", next=request.full_path.rstrip("?")))
        return view(*args, **kwargs)
    return wrapper
