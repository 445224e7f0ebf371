"""Google's consent flow (authorization code + PKCE) with google-auth-oauthlib.

The result is the credential blob GoogleProvider reads: JSON with the refresh
token, the current access token and its expiry. The engine stores it encrypted.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from urllib.parse import urlparse

from google_auth_oauthlib.flow import Flow


@dataclass(frozen=True)
class GoogleSettings:
    client_id: str
    client_secret: str
    auth_uri: str
    token_uri: str
    api_endpoint: str
    scopes: tuple[str, ...]
    revoke_uri: str = "https://oauth2.googleapis.com/revoke"


def _flow(settings: GoogleSettings, redirect_uri: str, state: str | None = None,
          code_verifier: str | None = None) -> Flow:
    if urlparse(redirect_uri).scheme == "http":
        # oauthlib refuses http redirects; only a server without TLS (development,
        # the sandbox) has them, and Google itself accepts http only for localhost.
        os.environ.setdefault("OAUTHLIB_INSECURE_TRANSPORT", "1")
    os.environ.setdefault("OAUTHLIB_RELAX_TOKEN_SCOPE", "1")  # Google widens "email" scopes
    config = {"web": {"client_id": settings.client_id, "client_secret": settings.client_secret,
                      "auth_uri": settings.auth_uri, "token_uri": settings.token_uri,
                      "redirect_uris": [redirect_uri]}}
    return Flow.from_client_config(config, scopes=list(settings.scopes), redirect_uri=redirect_uri,
                                   state=state, code_verifier=code_verifier,
                                   autogenerate_code_verifier=code_verifier is None)


def consent_url(settings: GoogleSettings, redirect_uri: str, state: str, login_hint: str = "") -> tuple[str, str]:
    """(URL to send the tech to, PKCE code verifier to keep until the callback)."""
    flow = _flow(settings, redirect_uri, state=state)
    extra = {"login_hint": login_hint} if login_hint else {}
    url, _ = flow.authorization_url(access_type="offline", prompt="consent",
                                    include_granted_scopes="true", **extra)
    assert flow.code_verifier is not None
    return url, flow.code_verifier


def exchange(settings: GoogleSettings, redirect_uri: str, callback_url: str, state: str,
             code_verifier: str) -> str:
    """Trade the callback's code for tokens; returns the credential blob (JSON)."""
    flow = _flow(settings, redirect_uri, state=state, code_verifier=code_verifier)
    flow.fetch_token(authorization_response=callback_url)
    credentials = flow.credentials
    if not credentials.refresh_token:
        raise ValueError("Google returned no refresh token; remove Lockstep's access in the "
                         "Google account and connect again")
    return json.dumps({
        "refresh_token": credentials.refresh_token,
        "token": credentials.token,
        "expiry": credentials.expiry.isoformat() if credentials.expiry else None,
        "scopes": list(credentials.scopes or settings.scopes),
    })
