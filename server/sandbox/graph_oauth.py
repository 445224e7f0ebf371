"""Microsoft identity platform (Azure AD v2 / Entra ID) endpoints for the emulator.

``/{tenant}/v2.0/.well-known/openid-configuration`` describes the endpoints;
``/{tenant}/oauth2/v2.0/authorize`` shows a consent page and answers with
``code`` + ``state`` (response_mode ``query`` or ``form_post``);
``/{tenant}/oauth2/v2.0/token`` redeems a code (PKCE ``code_verifier``, the
exact ``redirect_uri``, the client secret) or a refresh token (a new refresh
token each time; revoked grants answer ``invalid_grant`` with an AADSTS code).
Token answers carry ``access_token``, ``refresh_token``, ``expires_in``,
``scope``, an unsigned ``id_token`` with the request's ``nonce``, and
``client_info`` when asked for — what MSAL needs to build its cache.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit, urlunsplit

from server.sandbox import graph_errors as errors
from server.sandbox.graph_store import GRAPH_RESOURCE, Store

OIDC_SCOPES = frozenset({"openid", "profile", "offline_access", "email"})
READ_SCOPES = frozenset({"calendars.read", "calendars.readwrite", "calendars.read.shared",
                         "calendars.readwrite.shared"})
WRITE_SCOPES = frozenset({"calendars.readwrite", "calendars.readwrite.shared"})


class OAuthError(Exception):
    """An error answer of the token endpoint, in AAD's shape."""

    def __init__(self, status: int, error: str, aadsts: int, description: str,
                 suberror: str | None = None) -> None:
        super().__init__(f"{status} {error}: AADSTS{aadsts}: {description}")
        self.status = status
        self.error = error
        self.aadsts = aadsts
        self.description = description
        self.suberror = suberror

    def body(self) -> dict[str, Any]:
        trace = str(uuid.uuid4())
        now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
        body: dict[str, Any] = {
            "error": self.error,
            "error_description": f"AADSTS{self.aadsts}: {self.description} "
                                 f"Trace ID: {trace} Correlation ID: {trace} Timestamp: {now}",
            "error_codes": [self.aadsts], "timestamp": now, "trace_id": trace,
            "correlation_id": trace}
        if self.suberror:
            body["suberror"] = self.suberror
        return body


@dataclass
class Client:
    client_id: str
    client_secret: str
    redirect_uris: tuple[str, ...] | None  # None: any http(s) URL


@dataclass
class AuthRequest:
    id: str
    client_id: str
    redirect_uri: str
    scopes: tuple[str, ...]
    state: str | None
    nonce: str | None
    challenge: str | None
    method: str
    response_mode: str
    login_hint: str | None


@dataclass
class AuthCode:
    user: str
    client_id: str
    redirect_uri: str
    scopes: tuple[str, ...]
    nonce: str | None
    challenge: str | None
    method: str
    expires_at: float
    used: bool = False


@dataclass
class Grant:
    """What one refresh token stands for (each refresh adds a new token for it)."""

    user: str
    client_id: str
    scopes: tuple[str, ...]
    revoked: bool = False


@dataclass
class AccessToken:
    user: str
    client_id: str
    scopes: tuple[str, ...]
    expires_at: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_jwt(claims: dict[str, Any]) -> str:
    header = {"typ": "JWT", "alg": "none", "kid": "sandbox"}
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}."


def graph_scope(scope: str) -> str:
    """``https://graph.microsoft.com/Calendars.Read`` and ``Calendars.Read`` alike, lower-cased."""
    if scope.lower().startswith(GRAPH_RESOURCE):
        scope = scope[len(GRAPH_RESOURCE):]
    return scope.lower()


def with_query(url: str, params: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


class IdentityServer:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.clients: dict[str, Client] = {}
        self.pending: dict[str, AuthRequest] = {}
        self.codes: dict[str, AuthCode] = {}
        self.refresh_tokens: dict[str, Grant] = {}
        self.access_tokens: dict[str, AccessToken] = {}

    def add_client(self, client_id: str, client_secret: str,
                   redirect_uris: list[str] | None = None) -> None:
        self.clients[client_id] = Client(client_id, client_secret,
                                         tuple(redirect_uris) if redirect_uris else None)

    # --- discovery ------------------------------------------------------------------
    def check_tenant(self, tenant: str) -> None:
        known = {"common", "organizations", self.store.config.tenant.lower(),
                 self.store.config.tenant_id}
        if tenant.lower() not in known:
            raise OAuthError(400, "invalid_tenant", 90002, f"Tenant '{tenant}' not found.")

    def openid_configuration(self, base: str, tenant: str) -> dict[str, Any]:
        self.check_tenant(tenant)
        root = f"{base}/{tenant}"
        return {
            "issuer": f"{base}/{self.store.config.tenant_id}/v2.0",
            "authorization_endpoint": f"{root}/oauth2/v2.0/authorize",
            "token_endpoint": f"{root}/oauth2/v2.0/token",
            "device_authorization_endpoint": f"{root}/oauth2/v2.0/devicecode",
            "end_session_endpoint": f"{root}/oauth2/v2.0/logout",
            "jwks_uri": f"{root}/discovery/v2.0/keys",
            "userinfo_endpoint": f"{base}/oidc/userinfo",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["client_secret_post",
                                                      "private_key_jwt", "client_secret_basic"],
            "code_challenge_methods_supported": ["plain", "S256"],
            "tenant_region_scope": "NA", "cloud_instance_name": "microsoftonline.com",
            "request_uri_parameter_supported": False,
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nonce", "name",
                                 "preferred_username", "oid", "tid", "ver"]}

    # --- authorization --------------------------------------------------------------
    def start(self, args: dict[str, str]) -> AuthRequest:
        """Validate an authorization request; OAuthError means an error page."""
        client = self.clients.get(args.get("client_id", ""))
        if client is None:
            raise OAuthError(400, "unauthorized_client", 700016,
                             f"Application with identifier '{args.get('client_id')}' was "
                             "not found in the directory.")
        redirect_uri = args.get("redirect_uri", "")
        if not redirect_uri.startswith(("http://", "https://")) or (
                client.redirect_uris is not None and redirect_uri not in client.redirect_uris):
            raise OAuthError(400, "invalid_request", 50011,
                             f"The redirect URI '{redirect_uri}' specified in the request "
                             "does not match the redirect URIs configured for the application.")
        if args.get("response_type") != "code":
            raise OAuthError(400, "unsupported_response_type", 700054,
                             "response_type must be 'code' for this application.")
        if not args.get("scope"):
            raise OAuthError(400, "invalid_request", 900144,
                             "The request body must contain the following parameter: 'scope'.")
        challenge = args.get("code_challenge") or None
        method = args.get("code_challenge_method") or ("plain" if challenge else "")
        if challenge and method not in ("S256", "plain"):
            raise OAuthError(400, "invalid_request", 501491, "Invalid code_challenge_method.")
        mode = args.get("response_mode") or "query"
        if mode not in ("query", "form_post", "fragment"):
            raise OAuthError(400, "invalid_request", 900130, f"Invalid response_mode '{mode}'.")
        login_hint = args.get("login_hint") or None
        if login_hint is not None and login_hint.lower() not in self.store.users:
            raise OAuthError(400, "invalid_grant", 50034,
                             f"The user account {login_hint} does not exist in the directory.")
        req = AuthRequest(id=secrets.token_urlsafe(12), client_id=client.client_id,
                          redirect_uri=redirect_uri, scopes=tuple(args["scope"].split()),
                          state=args.get("state"), nonce=args.get("nonce"),
                          challenge=challenge, method=method, response_mode=mode,
                          login_hint=login_hint)
        self.pending[req.id] = req
        return req

    def decide(self, req: AuthRequest, email: str | None, approve: bool) -> dict[str, str]:
        """The parameters of the answer to the redirect URI: a code, or an error."""
        self.pending.pop(req.id, None)
        params: dict[str, str] = {}
        if not approve or email is None or email.lower() not in self.store.users:
            params["error"] = "access_denied"
            params["error_description"] = ("AADSTS65004: User declined to consent to access "
                                           "the app.")
        else:
            code = "0.A" + secrets.token_urlsafe(48)
            self.codes[code] = AuthCode(email.lower(), req.client_id, req.redirect_uri,
                                        req.scopes, req.nonce, req.challenge, req.method,
                                        self.store.clock.now() + self.store.config.auth_code_ttl)
            params["code"] = code
            params["client_info"] = self._client_info(email)
        if req.state is not None:
            params["state"] = req.state
        params["session_state"] = str(uuid.uuid4())
        return params

    def consent_page(self, req: AuthRequest, action: str) -> str:
        users = sorted(u.email for u in self.store.users.values())
        hint = (req.login_hint or "").lower()
        options = "".join(
            f'<option value="{html.escape(u)}"{" selected" if u.lower() == hint else ""}>'
            f"{html.escape(u)}</option>" for u in users)
        scopes = "".join(f"<li>{html.escape(s)}</li>" for s in req.scopes)
        return ("<!doctype html><html><head><meta charset='utf-8'><title>Permissions "
                "requested - Microsoft (sandbox)</title></head><body>"
                "<h1>Microsoft sandbox: permissions requested</h1>"
                f"<p>Application <code>{html.escape(req.client_id)}</code> asks for:</p>"
                f"<ul>{scopes}</ul><form method='post' action='{html.escape(action)}'>"
                f"<input type='hidden' name='request_id' value='{html.escape(req.id)}'>"
                f"<label>Account <select name='email'>{options}</select></label> "
                "<button name='decision' value='approve'>Accept</button> "
                "<button name='decision' value='deny'>Cancel</button></form></body></html>")

    @staticmethod
    def form_post_page(redirect_uri: str, params: dict[str, str]) -> str:
        """What AAD answers for response_mode=form_post: a self-submitting form."""
        fields = "".join(f"<input type='hidden' name='{html.escape(k)}' "
                         f"value='{html.escape(v)}'>" for k, v in params.items())
        return ("<!doctype html><html><head><title>Working...</title></head>"
                "<body onload='document.forms[0].submit()'>"
                f"<form method='POST' name='hiddenform' action='{html.escape(redirect_uri)}'>"
                f"{fields}<noscript><p>Script is disabled. Click Submit to continue.</p>"
                "<input type='submit' value='Submit'></noscript></form></body></html>")

    # --- token endpoint ---------------------------------------------------------------
    def _client(self, form: dict[str, str], authorization: str | None) -> Client:
        client_id, secret = form.get("client_id"), form.get("client_secret")
        if authorization and authorization.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(authorization[6:].strip()).decode()
            except (ValueError, UnicodeDecodeError):
                raise OAuthError(401, "invalid_client", 7000215,
                                 "Invalid client secret provided.") from None
            basic_id, _, basic_secret = decoded.partition(":")
            client_id, secret = unquote_plus(basic_id), unquote_plus(basic_secret)
        client = self.clients.get(client_id or "")
        if client is None:
            raise OAuthError(400, "unauthorized_client", 700016,
                             f"Application with identifier '{client_id}' was not found in "
                             "the directory.")
        if not secret:
            raise OAuthError(401, "invalid_client", 7000218,
                             "The request body must contain the following parameter: "
                             "'client_assertion' or 'client_secret'.")
        if not secrets.compare_digest(client.client_secret, secret):
            raise OAuthError(401, "invalid_client", 7000215, "Invalid client secret provided.")
        return client

    def token(self, tenant: str, form: dict[str, str], authorization: str | None,
              base: str) -> dict[str, Any]:
        self.check_tenant(tenant)
        grant_type = form.get("grant_type", "")
        if grant_type not in ("authorization_code", "refresh_token"):
            raise OAuthError(400, "unsupported_grant_type", 70003,
                             f"The app requested an unsupported grant type '{grant_type}'.")
        with self.store.lock:
            client = self._client(form, authorization)
            if grant_type == "authorization_code":
                return self._redeem_code(client, form, base)
            return self._refresh(client, form, base)

    def _redeem_code(self, client: Client, form: dict[str, str], base: str) -> dict[str, Any]:
        record = self.codes.get(form.get("code", ""))
        if record is None or record.client_id != client.client_id:
            raise OAuthError(400, "invalid_grant", 9002313,
                             "Invalid request. Request is malformed or invalid.")
        if record.used:
            raise OAuthError(400, "invalid_grant", 54005,
                             "OAuth2 Authorization code was already redeemed, please retry "
                             "with a new valid code or use an existing refresh token.")
        if record.expires_at <= self.store.clock.now():
            raise OAuthError(400, "invalid_grant", 70008,
                             "The provided authorization code or refresh token has expired "
                             "due to inactivity.")
        if form.get("redirect_uri", "") != record.redirect_uri:
            raise OAuthError(400, "invalid_grant", 50148,
                             "The redirect_uri specified in the token request does not match "
                             "the redirect_uri of the authorization request.")
        if record.challenge:
            verifier = form.get("code_verifier") or ""
            computed = (_b64(hashlib.sha256(verifier.encode()).digest())
                        if record.method == "S256" else verifier)
            if not verifier or not secrets.compare_digest(computed, record.challenge):
                raise OAuthError(400, "invalid_grant", 501481,
                                 "The Code_Verifier does not match the code_challenge supplied "
                                 "in the authorization request.")
        record.used = True
        grant = Grant(record.user, client.client_id, record.scopes)
        return self._issue(grant, record.scopes, form, base, record.nonce)

    def _refresh(self, client: Client, form: dict[str, str], base: str) -> dict[str, Any]:
        grant = self.refresh_tokens.get(form.get("refresh_token", ""))
        if grant is None:
            raise OAuthError(400, "invalid_grant", 9002313,
                             "Invalid request. Request is malformed or invalid.",
                             suberror="bad_token")
        if grant.revoked:
            raise OAuthError(400, "invalid_grant", 50173,
                             "The provided grant has expired due to it being revoked, a fresh "
                             "auth token is needed. The user might have changed or reset their "
                             "password.", suberror="bad_token")
        if grant.client_id != client.client_id:
            raise OAuthError(400, "invalid_grant", 70000,
                             "The provided value for the 'refresh_token' is not valid: it was "
                             "issued to a different client.")
        scopes = tuple(form["scope"].split()) if form.get("scope") else grant.scopes
        extra = {graph_scope(s) for s in scopes} - {graph_scope(s) for s in grant.scopes}
        if extra - OIDC_SCOPES:
            raise OAuthError(400, "invalid_grant", 65001,
                             "The user or administrator has not consented to use the "
                             f"application for {sorted(extra)}.")
        return self._issue(grant, scopes, form, base, None)

    def _issue(self, grant: Grant, scopes: tuple[str, ...], form: dict[str, str], base: str,
               nonce: str | None) -> dict[str, Any]:
        user = self.store.user(grant.user)
        now = self.store.clock.now()
        ttl = self.store.config.access_token_ttl
        tid = self.store.config.tenant_id
        access = unsigned_jwt({
            "aud": GRAPH_RESOURCE.rstrip("/"), "iss": f"https://sts.windows.net/{tid}/",
            "iat": int(now), "nbf": int(now), "exp": int(now + ttl), "oid": user.id,
            "tid": tid, "appid": grant.client_id, "upn": user.email, "jti": secrets.token_hex(8),
            "scp": " ".join(s for s in scopes if graph_scope(s) not in OIDC_SCOPES)})
        self.access_tokens[access] = AccessToken(grant.user, grant.client_id, scopes, now + ttl)
        body: dict[str, Any] = {
            "token_type": "Bearer", "scope": " ".join(scopes), "expires_in": ttl,
            "ext_expires_in": ttl, "access_token": access}
        if "offline_access" in {graph_scope(s) for s in grant.scopes}:
            refresh = "0.AR" + secrets.token_urlsafe(64)
            self.refresh_tokens[refresh] = grant  # older refresh tokens stay valid too
            body["refresh_token"] = refresh
        id_claims = {
            "aud": grant.client_id, "iss": f"{base}/{tid}/v2.0", "iat": int(now),
            "nbf": int(now), "exp": int(now) + 3600, "name": user.name, "oid": user.id,
            "preferred_username": user.email, "sub": _b64(hashlib.sha256(
                f"{user.id}{grant.client_id}".encode()).digest()), "tid": tid, "ver": "2.0"}
        if nonce is not None:
            id_claims["nonce"] = nonce
        body["id_token"] = unsigned_jwt(id_claims)
        if form.get("client_info") == "1":
            body["client_info"] = self._client_info(user.email)
        return body

    def _client_info(self, email: str) -> str:
        user = self.store.user(email)
        return _b64(json.dumps({"uid": user.id, "utid": self.store.config.tenant_id}).encode())

    # --- control and authentication ---------------------------------------------------
    def revoke(self, email: str) -> int:
        count = 0
        with self.store.lock:
            seen: set[int] = set()
            for grant in self.refresh_tokens.values():
                if grant.user == email.lower() and not grant.revoked:
                    grant.revoked = True
                    if id(grant) not in seen:
                        seen.add(id(grant))
                        count += 1
            for token, access in list(self.access_tokens.items()):
                if access.user == email.lower():
                    del self.access_tokens[token]
        return count

    def expire_access_tokens(self, email: str | None = None) -> None:
        with self.store.lock:
            now = self.store.clock.now()
            for access in self.access_tokens.values():
                if email is None or access.user == email.lower():
                    access.expires_at = min(access.expires_at, now)

    def authenticate(self, authorization: str | None) -> AccessToken:
        scheme, _, value = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise errors.unauthenticated("Access token is empty.")
        with self.store.lock:
            access = self.access_tokens.get(value.strip())
            if access is None:
                raise errors.unauthenticated("Invalid JWT token. The token is malformed.")
            if access.expires_at <= self.store.clock.now():
                raise errors.unauthenticated("Lifetime validation failed, the token is expired.")
            return access

    @staticmethod
    def require(access: AccessToken, write: bool) -> None:
        granted = {graph_scope(s) for s in access.scopes}
        if not granted & (WRITE_SCOPES if write else READ_SCOPES):
            raise errors.access_denied()
