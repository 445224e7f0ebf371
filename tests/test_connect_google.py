"""Connecting Google: one-time link → consent (emulator, real google-auth-oauthlib) → encrypted tokens."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import requests
from sqlalchemy import select

from server.connections import key_ring
from server.config import load_config
from server.models import Connection, Job
from server.sandbox.google import GoogleSandbox
from server.security import load_or_create_secret_key
from tests.support.lockstep_server import LockstepServer, running_server


@pytest.fixture(scope="module")
def google() -> Iterator[GoogleSandbox]:
    with GoogleSandbox() as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def server(backend: str, google: GoogleSandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LockstepServer]:
    env = {
        "LOCKSTEP_GOOGLE_CLIENT_ID": google.DEFAULT_CLIENT_ID,
        "LOCKSTEP_GOOGLE_CLIENT_SECRET": google.DEFAULT_CLIENT_SECRET,
        "LOCKSTEP_GOOGLE_AUTH_URI": google.auth_uri,
        "LOCKSTEP_GOOGLE_TOKEN_URI": google.token_uri,
        "LOCKSTEP_GOOGLE_API_ENDPOINT": google.api_endpoint,
    }
    with running_server(tmp_path_factory.mktemp(f"connect-{backend}"), backend, extra_env=env) as started:
        yield started


def _link(server: LockstepServer, user: str) -> str:
    out = server.cli("connect", "google", user).stdout.strip().splitlines()
    assert out[-1].startswith(f"{server.url}/oauth/google/start?link=")
    return out[-1]


def _consent(link: str, decision: str = "approve") -> requests.Response:
    start = requests.get(link, allow_redirects=False)
    assert start.status_code == 302, start.text
    consent = start.headers["Location"]
    assert "code_challenge=" in consent and "access_type=offline" in consent
    answer = requests.get(consent + f"&sandbox_consent={decision}", allow_redirects=False)
    assert answer.status_code == 302
    return requests.get(answer.headers["Location"], allow_redirects=False)


def test_connect_stores_encrypted_refresh_token_and_queues_import(server: LockstepServer, google: GoogleSandbox) -> None:
    user, _ = server.add_tech()
    google.add_user(f"{user}@example.com")
    link = _link(server, user)
    callback = _consent(link)
    assert callback.status_code == 200, callback.text
    assert f"connected for {user}" in callback.text

    reused = requests.get(link, allow_redirects=False)
    assert reused.status_code == 400 and "already used" in reused.text

    with server.database.read() as session:
        connection = session.scalar(select(Connection).where(Connection.provider == "google"))
        assert connection is not None and connection.state == "ok"
        ciphertext = connection.credentials
        queued = session.scalars(select(Job.kind)).all()
    assert ciphertext.startswith("v1.")
    config = load_config(server.data_dir, environ={})
    ring = key_ring(config, load_or_create_secret_key(server.data_dir))
    blob = json.loads(ring.decrypt(ciphertext))
    assert blob["refresh_token"] and blob["refresh_token"] not in ciphertext
    assert "initial_import" in queued
    if server.database_url.startswith("sqlite"):
        raw = (server.data_dir / "lockstep.db").read_bytes() + (server.data_dir / "lockstep.db-wal").read_bytes()
        assert blob["refresh_token"].encode() not in raw


def test_denied_or_forged_consent_connects_nothing(server: LockstepServer, google: GoogleSandbox) -> None:
    user, _ = server.add_tech()
    google.add_user(f"{user}@example.com")
    denied = _consent(_link(server, user), decision="deny")
    assert denied.status_code == 400 and "not connected" in denied.text.lower()
    forged = requests.get(f"{server.url}/oauth/google/callback?state=forged&code=x")
    assert forged.status_code == 400 and "unknown or has expired" in forged.text
    bogus = requests.get(f"{server.url}/oauth/google/start?link=not-a-link", allow_redirects=False)
    assert bogus.status_code == 400
    unknown = server.cli("connect", "google", "no-such-tech", check=False)
    assert unknown.returncode == 1 and "no tech named" in unknown.stderr
