"""Configuration: one declarative schema drives the file, the environment and the docs.

Every option can be set in the TOML config file (``[section] key = value``) or
in the environment as ``LOCKSTEP_<SECTION>_<KEY>``; the environment wins.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

Converter = Callable[[Any], Any]


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _http_url(value: Any) -> str:
    text = str(value).strip()
    if text and not text.startswith(("https://", "http://")):
        raise ValueError(f"must be an http(s) URL, not {value!r}")
    return text


def _smtp_security(value: Any) -> str:
    text = str(value).strip().lower()
    if text not in ("starttls", "ssl", "none"):
        raise ValueError(f"must be starttls, ssl or none, not {value!r}")
    return text


@dataclass(frozen=True)
class Option:
    default: Any
    convert: Converter
    help: str


SCHEMA: dict[str, dict[str, Option]] = {
    "server": {
        "host": Option("127.0.0.1", str, "Address to listen on"),
        "port": Option(5232, int, "Port to listen on"),
        "public_url": Option("", str, "Base URL providers call back; default http://HOST:PORT"),
        "threads": Option(16, int, "Worker threads of the WSGI server"),
        "max_body_bytes": Option(1024 * 1024, int, "Largest request body accepted (413 above)"),
        "auth_delay": Option(1.0, float, "Seconds a failed login takes, whatever the cause"),
        "tls_cert": Option("", str, "PEM certificate for HTTPS (optional)"),
        "tls_key": Option("", str, "PEM private key for HTTPS (optional)"),
        "trust_forwarded": Option(
            False, _to_bool, "Honour X-Forwarded-Proto/Host/Port from a reverse proxy"
        ),
    },
    "database": {
        "url": Option("", str, "SQLAlchemy URL; default sqlite:///DATA/lockstep.db"),
    },
    "security": {
        "secret_key": Option("", str, "Secret key; default LOCKSTEP_SECRET_KEY, else DATA/secret.key"),
        "retired_keys": Option("", str, "Comma-separated former secret keys, still able to decrypt"),
    },
    "google": {
        "client_id": Option("", str, "OAuth client id of the Google Cloud project"),
        "client_secret": Option("", str, "OAuth client secret"),
        "auth_uri": Option("https://accounts.google.com/o/oauth2/auth", str, "Consent page"),
        "token_uri": Option("https://oauth2.googleapis.com/token", str, "Token endpoint"),
        "revoke_uri": Option("https://oauth2.googleapis.com/revoke", str,
                             "Revocation endpoint (used when a tech disconnects)"),
        "api_endpoint": Option("https://www.googleapis.com/calendar/v3/", str, "Calendar API v3 base"),
        "scopes": Option(
            "https://www.googleapis.com/auth/calendar.events "
            "https://www.googleapis.com/auth/calendar.calendarlist.readonly",
            str, "Space-separated scopes (events read/write, calendar list read)"),
    },
    "microsoft": {
        "client_id": Option("", str, "Application (client) id of the Entra ID app registration"),
        "client_secret": Option("", str, "Client secret of that app registration"),
        "tenant": Option("common", str, "Tenant id or domain; common = any work or personal account"),
        "authority": Option("", str, "Authority URL; default https://login.microsoftonline.com/TENANT"),
        "graph_url": Option("https://graph.microsoft.com/v1.0", str, "Microsoft Graph base URL"),
        "ca_bundle": Option("", str, "PEM CA bundle to trust for authority and Graph (sandbox only)"),
        "subscription_minutes": Option(
            10080, int, "Requested lifetime of Graph subscriptions (renewed at half-life)"),
    },
    "caldav": {
        "poll_seconds": Option(300, int, "Polling interval for remote CalDAV accounts (no push)"),
    },
    "freebusy": {
        "horizon_past_days": Option(30, int, "Days before today kept in the busy index and provider listings"),
        "horizon_future_days": Option(
            400, int, "Days ahead kept in the busy index (recurring series expanded that far, extended daily)"),
    },
    "sync": {
        "poll_seconds": Option(300, int, "Safety-net polling interval per calendar"),
        "watch_ttl_seconds": Option(7 * 24 * 3600, int, "Requested lifetime of push channels"),
        "workers": Option(2, int, "Sync worker threads in serve / worker"),
        "lease_seconds": Option(
            120, int, "How long a claimed job stays a worker's without renewal (taken over after)"),
        "push": Option(True, _to_bool, "Ask providers for push notifications (else poll only)"),
    },
    "smtp": {
        "host": Option("", str, "SMTP server for notification email; empty = no email"),
        "port": Option(587, int, "SMTP port (587 submission with STARTTLS, 465 implicit TLS)"),
        "username": Option("", str, "SMTP login; empty = no login"),
        "password": Option("", str, "SMTP password (prefer LOCKSTEP_SMTP_PASSWORD)"),
        "security": Option("starttls", _smtp_security, "starttls, ssl (implicit TLS) or none"),
        "from_address": Option("", str, "From: address; default lockstep@<this host's name>"),
        "timeout_seconds": Option(10.0, float, "Timeout of each SMTP connection step"),
    },
    "notify": {
        "email_to": Option("", str, "Comma-separated dispatcher addresses that get every notification"),
        "email_techs": Option(True, _to_bool, "Also email each tech at their own address"),
        "webhook_url": Option("", _http_url, "URL that gets a signed JSON POST per notification; empty = none"),
        "webhook_secret": Option("", str, "HMAC-SHA256 key signing webhook bodies"),
        "webhook_timeout_seconds": Option(10.0, float, "Timeout of each webhook request"),
        "max_attempts": Option(10, int, "Delivery attempts per channel before it is marked failed"),
    },
    "logging": {
        "level": Option("info", str, "debug, info, warning or error"),
    },
}


@dataclass
class Config:
    data_dir: Path
    values: dict[str, dict[str, Any]] = field(default_factory=dict)

    def get(self, section: str, key: str) -> Any:
        return self.values[section][key]

    @property
    def database_url(self) -> str:
        url = self.get("database", "url") or f"sqlite:///{self.data_dir / 'lockstep.db'}"
        return normalize_database_url(url)

    @property
    def public_url(self) -> str:
        url = self.get("server", "public_url")
        if url:
            return url.rstrip("/")
        scheme = "https" if self.get("server", "tls_cert") else "http"
        return f"{scheme}://{self.get('server', 'host')}:{self.get('server', 'port')}"


def normalize_database_url(url: str) -> str:
    """Plain ``postgresql://`` URLs use psycopg 3, the driver we ship."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def load_config(
    data_dir: str | Path | None = None,
    config_file: str | Path | None = None,
    environ: dict[str, str] | None = None,
) -> Config:
    """Defaults, then the file, then ``LOCKSTEP_*`` variables."""
    env = os.environ if environ is None else environ
    file_values: dict[str, Any] = {}
    config_path = config_file or env.get("LOCKSTEP_CONFIG")
    if config_path:
        with open(config_path, "rb") as handle:
            try:
                file_values = tomllib.load(handle)
            except tomllib.TOMLDecodeError as exc:
                raise ValueError(f"{config_path}: not valid TOML: {exc}") from exc
    unknown = set(file_values) - set(SCHEMA)
    if unknown:
        raise ValueError(f"unknown config section(s): {', '.join(sorted(unknown))}")
    values: dict[str, dict[str, Any]] = {}
    for section, options in SCHEMA.items():
        given = file_values.get(section, {})
        if not isinstance(given, dict):
            raise ValueError(f"{section} must be a [{section}] section, not a single value")
        unknown_keys = set(given) - set(options)
        if unknown_keys:
            raise ValueError(f"unknown option(s) in [{section}]: {', '.join(sorted(unknown_keys))}")
        values[section] = {}
        for key, option in options.items():
            raw = env.get(f"LOCKSTEP_{section.upper()}_{key.upper()}", given.get(key, option.default))
            try:
                values[section][key] = option.convert(raw)
            except ValueError as exc:
                raise ValueError(f"[{section}] {key}: {exc}") from exc
    directory = Path(data_dir or env.get("LOCKSTEP_DATA") or "./data").resolve()
    return Config(data_dir=directory, values=values)
