"""Google's OAuth 2.0 endpoints for the emulator.

Consent (``/o/oauth2/auth``) redirects back with ``code`` and ``state``; the token
endpoint (``/token``) exchanges a code (checking the PKCE ``code_verifier``) or a
refresh token, with the client authenticated either by form fields or HTTP
Basic; ``/revoke`` revokes a grant. Errors use the OAuth shape Google returns,
``{"error": "invalid_grant", "error_description": "..."}``. Access tokens expire
after ``access_token_ttl``; the API then answers 401 and clients refresh.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import secrets
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit, urlunsplit

from server.sandbox import google_errors as errors
from server.sandbox.google_store import Store

CALENDAR_SCOPE = "https://www.googleapis.com/auth/calendar"
_SCOPE_ALIASES = {
    "email": "https://www.googleapis.com/auth/userinfo.email",
    "profile": "https://www.googleapis.com/auth/userinfo.profile",
}


class OAuthError(Exception):
    """An error answer of the token or revocation endpoint."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(f"{status} {error}: {description}")
        self.status = status
        self.error = error
        self.description = description

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


@dataclass
class OAuthClient:
    client_id: str
    client_secret: str
    redirect_uris: tuple[str, ...] | None = None  # None: any http(s) URL


@dataclass
class Grant:
    """What a refresh token stands for: one user's consent to one client."""

    refresh_token: str
    user: str
    client_id: str
    scopes: tuple[str, ...]
    revoked: bool = False


@dataclass
class AccessToken:
    token: str
    user: str
    client_id: str
    scopes: tuple[str, ...]
    expires_at: float
    grant: str | None
    revoked: bool = False


@dataclass
class AuthCode:
    code: str
    user: str
    client_id: str
    redirect_uri: str
    scopes: tuple[str, ...]
    challenge: str | None
    method: str
    expires_at: float
    offline: bool
    used: bool = False


@dataclass
class ConsentRequest:
    """A validated authorization request waiting for the user's decision."""

    id: str
    client_id: str
    redirect_uri: str
    scopes: tuple[str, ...]
    state: str | None
    challenge: str | None
    method: str
    offline: bool
    login_hint: str | None
    extra: dict[str, str] = field(default_factory=dict)


def normalise_scopes(raw: str) -> tuple[str, ...]:
    seen: list[str] = []
    for scope in raw.split():
        scope = _SCOPE_ALIASES.get(scope, scope)
        if scope not in seen:
            seen.append(scope)
    return tuple(seen)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def with_query(url: str, params: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


class OAuthServer:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.clients: dict[str, OAuthClient] = {}
        self.grants: dict[str, Grant] = {}
        self.tokens: dict[str, AccessToken] = {}
        self.codes: dict[str, AuthCode] = {}
        self.pending: dict[str, ConsentRequest] = {}

    def add_client(self, client_id: str, client_secret: str,
                   redirect_uris: list[str] | None = None) -> OAuthClient:
        client = OAuthClient(client_id, client_secret,
                             tuple(redirect_uris) if redirect_uris is not None else None)
        self.clients[client_id] = client
        return client

    # --- consent -------------------------------------------------------------------
    def start_consent(self, args: dict[str, str]) -> ConsentRequest:
        """Validate an authorization request; raises OAuthError for an error page."""
        client = self.clients.get(args.get("client_id", ""))
        if client is None:
            raise OAuthError(401, "invalid_client", "The OAuth client was not found.")
        redirect_uri = args.get("redirect_uri", "")
        allowed = client.redirect_uris
        if not redirect_uri.startswith(("http://", "https://")) or (
                allowed is not None and redirect_uri not in allowed):
            raise OAuthError(400, "redirect_uri_mismatch",
                             "The redirect URI in the request does not match the ones "
                             "authorized for the OAuth client.")
        if not args.get("scope"):
            raise OAuthError(400, "invalid_request", "Missing required parameter: scope")
        challenge = args.get("code_challenge") or None
        method = args.get("code_challenge_method") or ("plain" if challenge else "")
        if challenge and method not in ("S256", "plain"):
            raise OAuthError(400, "invalid_request", "Invalid code_challenge_method.")
        req = ConsentRequest(
            id=secrets.token_urlsafe(12), client_id=client.client_id,
            redirect_uri=redirect_uri, scopes=normalise_scopes(args["scope"]),
            state=args.get("state"), challenge=challenge, method=method,
            offline=args.get("access_type") == "offline", login_hint=args.get("login_hint"),
            extra={"response_type": args.get("response_type", "")})
        self.pending[req.id] = req
        return req

    def decide(self, req: ConsentRequest, user: str | None, approve: bool) -> str:
        """The redirect back to the client, with a code or ``error=access_denied``."""
        self.pending.pop(req.id, None)
        params: dict[str, str] = {}
        if req.extra.get("response_type") != "code":
            params["error"] = "unsupported_response_type"
        elif not approve or user is None or user not in self.store.users:
            params["error"] = "access_denied"
        else:
            code = "4/" + secrets.token_urlsafe(32)
            self.codes[code] = AuthCode(code, user, req.client_id, req.redirect_uri, req.scopes,
                                        req.challenge, req.method,
                                        self.store.clock.now() + self.store.config.auth_code_ttl,
                                        req.offline)
            params["code"] = code
            params["scope"] = " ".join(req.scopes)
        if req.state is not None:
            params["state"] = req.state
        return with_query(req.redirect_uri, params)

    def consent_page(self, req: ConsentRequest, action: str) -> str:
        """A plain page to pick an account and allow or deny, for people and browsers."""
        users = sorted(self.store.users)
        options = "".join(
            f'<option value="{html.escape(u)}"{" selected" if u == req.login_hint else ""}>'
            f"{html.escape(u)}</option>" for u in users)
        scopes = "".join(f"<li>{html.escape(s)}</li>" for s in req.scopes)
        return (
            "<!doctype html><html><head><meta charset='utf-8'><title>Sign in - Google "
            "Accounts (sandbox)</title></head><body><h1>Google sandbox consent</h1>"
            f"<p>Client <code>{html.escape(req.client_id)}</code> asks for:</p><ul>{scopes}</ul>"
            f"<form method='post' action='{html.escape(action)}'>"
            f"<input type='hidden' name='request_id' value='{html.escape(req.id)}'>"
            f"<label>Account <select name='email'>{options}</select></label> "
            "<button name='decision' value='approve'>Allow</button> "
            "<button name='decision' value='deny'>Cancel</button></form></body></html>")

    # --- token endpoint ---------------------------------------------------------------
    def _client(self, form: dict[str, str], authorization: str | None) -> OAuthClient:
        client_id = form.get("client_id")
        secret = form.get("client_secret")
        if authorization and authorization.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(authorization[6:].strip()).decode()
            except (ValueError, UnicodeDecodeError):
                raise OAuthError(401, "invalid_client", "Unauthorized") from None
            basic_id, _, basic_secret = decoded.partition(":")
            basic_id, basic_secret = unquote_plus(basic_id), unquote_plus(basic_secret)
            if client_id and client_id != basic_id:
                raise OAuthError(401, "invalid_client", "Unauthorized")
            client_id, secret = basic_id, basic_secret
        client = self.clients.get(client_id or "")
        if client is None:
            raise OAuthError(401, "invalid_client", "The OAuth client was not found.")
        if not secrets.compare_digest(client.client_secret, secret or ""):
            raise OAuthError(401, "invalid_client", "Unauthorized")
        return client

    def token(self, form: dict[str, str], authorization: str | None) -> dict[str, Any]:
        grant_type = form.get("grant_type", "")
        if grant_type not in ("authorization_code", "refresh_token"):
            raise OAuthError(400, "unsupported_grant_type", f"Invalid grant_type: {grant_type}")
        with self.store.lock:
            client = self._client(form, authorization)
            if grant_type == "authorization_code":
                return self._exchange_code(client, form)
            return self._refresh(client, form)

    def _exchange_code(self, client: OAuthClient, form: dict[str, str]) -> dict[str, Any]:
        record = self.codes.get(form.get("code", ""))
        if record is None:
            raise OAuthError(400, "invalid_grant", "Malformed auth code.")
        if record.used or record.expires_at <= self.store.clock.now() or \
                record.client_id != client.client_id:
            raise OAuthError(400, "invalid_grant", "Bad Request")
        if form.get("redirect_uri", "") != record.redirect_uri:
            raise OAuthError(400, "redirect_uri_mismatch", "Bad Request")
        if record.challenge:
            verifier = form.get("code_verifier")
            if not verifier:
                raise OAuthError(400, "invalid_grant", "Missing code verifier.")
            computed = (_b64(hashlib.sha256(verifier.encode()).digest())
                        if record.method == "S256" else verifier)
            if not secrets.compare_digest(computed, record.challenge):
                raise OAuthError(400, "invalid_grant", "Invalid code verifier.")
        record.used = True
        return self.issue(record.user, client.client_id, record.scopes, offline=record.offline)

    def _refresh(self, client: OAuthClient, form: dict[str, str]) -> dict[str, Any]:
        grant = self.grants.get(form.get("refresh_token", ""))
        if grant is None or grant.revoked:
            raise OAuthError(400, "invalid_grant", "Token has been expired or revoked.")
        if grant.client_id != client.client_id:
            raise OAuthError(401, "unauthorized_client", "Unauthorized")
        body = self._access_token(grant.user, client.client_id, grant.scopes,
                                  grant.refresh_token)
        return body

    def issue(self, user: str, client_id: str, scopes: tuple[str, ...] | list[str],
              *, offline: bool = True) -> dict[str, Any]:
        """Tokens for a consented user, as the token endpoint returns them."""
        scopes = tuple(scopes)
        refresh = None
        if offline:
            refresh = "1//" + secrets.token_urlsafe(40)
            self.grants[refresh] = Grant(refresh, user, client_id, scopes)
        body = self._access_token(user, client_id, scopes, refresh)
        if refresh:
            body["refresh_token"] = refresh
        if "openid" in scopes:
            body["id_token"] = self._id_token(user, client_id)
        return body

    def _access_token(self, user: str, client_id: str, scopes: tuple[str, ...],
                      grant: str | None) -> dict[str, Any]:
        ttl = self.store.config.access_token_ttl
        token = "ya29." + secrets.token_urlsafe(40)
        self.tokens[token] = AccessToken(token, user, client_id, scopes,
                                         self.store.clock.now() + ttl, grant)
        return {"access_token": token, "expires_in": ttl, "scope": " ".join(scopes),
                "token_type": "Bearer"}

    def _id_token(self, user: str, client_id: str) -> str:
        now = int(self.store.clock.now())
        header = {"alg": "RS256", "kid": "sandbox", "typ": "JWT"}
        payload = {"iss": "https://accounts.google.com", "aud": client_id, "azp": client_id,
                   "sub": hashlib.sha256(user.encode()).hexdigest()[:21], "email": user,
                   "email_verified": True, "iat": now, "exp": now + 3600}
        return ".".join([_b64(json.dumps(header).encode()), _b64(json.dumps(payload).encode()),
                         _b64(b"sandbox-unsigned")])

    # --- revocation and API authentication ----------------------------------------------
    def revoke(self, token: str) -> None:
        with self.store.lock:
            grant = self.grants.get(token)
            access = self.tokens.get(token)
            if grant is None and access is not None and access.grant:
                grant = self.grants.get(access.grant)
            if grant is not None and not grant.revoked:
                self._revoke_grant(grant)
                return
            if access is not None and not access.revoked and \
                    access.expires_at > self.store.clock.now():
                access.revoked = True
                return
            raise OAuthError(400, "invalid_token", "Token expired or revoked")

    def _revoke_grant(self, grant: Grant) -> None:
        grant.revoked = True
        for access in self.tokens.values():
            if access.grant == grant.refresh_token:
                access.revoked = True

    def revoke_grants(self, *, token: str | None = None, user: str | None = None) -> int:
        """Revoke one refresh token, or all of a user's (what "remove access" does)."""
        count = 0
        with self.store.lock:
            for grant in self.grants.values():
                if grant.revoked:
                    continue
                if (token is not None and grant.refresh_token == token) or \
                        (token is None and user is not None and grant.user == user):
                    self._revoke_grant(grant)
                    count += 1
        return count

    def expire_access_tokens(self, user: str | None = None) -> None:
        with self.store.lock:
            for access in self.tokens.values():
                if user is None or access.user == user:
                    access.expires_at = min(access.expires_at, self.store.clock.now())

    def authenticate(self, authorization: str | None, query_token: str | None) -> AccessToken:
        token = None
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "bearer":
                token = value.strip()
        token = token or query_token
        if not token:
            raise errors.auth_missing()
        with self.store.lock:
            access = self.tokens.get(token)
            if access is None or access.revoked or access.expires_at <= self.store.clock.now():
                raise errors.auth_invalid()
            return access
