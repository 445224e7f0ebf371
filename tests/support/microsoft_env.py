"""A Lockstep server wired to the Graph emulator, and accounts signed in through the real
MSAL auth-code flow against the emulator's consent page."""

from __future__ import annotations

import html
import re
import secrets
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode

import requests

from server.providers.microsoft_mapping import lockstep_uid_of
from server.providers.microsoft_zones import read_when, write_when
from server.providers.oauth_microsoft import MicrosoftSettings, consent_url, exchange
from server.sandbox.graph import GraphSandbox
from tests.support.lockstep_server import LockstepServer


def graph_env(graph: GraphSandbox, **extra: str) -> dict[str, str]:
    return {**graph.lockstep_env(), **extra}


def graph_settings(graph: GraphSandbox, **extra: Any) -> MicrosoftSettings:
    return MicrosoftSettings(client_id=graph.DEFAULT_CLIENT_ID,
                             client_secret=graph.DEFAULT_CLIENT_SECRET, authority=graph.authority,
                             graph_url=graph.graph_url, ca_bundle=graph.ca_bundle, **extra)


def approve(graph: GraphSandbox, consent: str) -> tuple[str, dict[str, str]]:
    """The emulator's consent page, approved: (the redirect URI, the answer's parameters),
    read from the self-submitting form of response_mode=form_post as a browser would."""
    answer = requests.get(consent + "&sandbox_consent=approve", allow_redirects=False,
                          verify=graph.ca_bundle)
    assert answer.status_code == 200, answer.text
    action = re.search(r"<form method='POST' name='hiddenform' action='([^']+)'", answer.text)
    assert action is not None, answer.text
    fields = re.findall(r"<input type='hidden' name='([^']+)' value='([^']*)'>", answer.text)
    return html.unescape(action.group(1)), {html.unescape(k): html.unescape(v) for k, v in fields}


def sign_in(graph: GraphSandbox, settings: MicrosoftSettings, email: str) -> str:
    """A credential blob for ``email`` made by MSAL's auth-code flow (no Lockstep server)."""
    redirect_uri, state = "http://127.0.0.1:9/oauth/microsoft/callback", secrets.token_urlsafe(16)
    url, flow = consent_url(settings, redirect_uri, state, login_hint=email)
    back, params = approve(graph, url)
    return exchange(settings, redirect_uri, f"{back}?{urlencode(params)}", state, flow)


def connect_microsoft(server: LockstepServer, graph: GraphSandbox, user: str,
                      time_zone: str = "UTC") -> str:
    """``lockstep connect microsoft USER`` → the link → consent (approved) → callback.
    Returns the mailbox address."""
    email = f"{user}@example.com"
    if email.lower() not in graph.store.users:
        graph.add_user(email, time_zone=time_zone)
    link = server.cli("connect", "microsoft", user).stdout.strip().splitlines()[-1]
    consent = requests.get(link, allow_redirects=False).headers["Location"]
    back, params = approve(graph, consent)
    done = requests.post(back, data=params, allow_redirects=False)
    assert done.status_code == 200, done.text
    return email


class GraphAccount:
    """Outlook through server/sandbox/graph.py, in the shape of tests/support/remote_accounts
    (RemoteAccount), so the shared end-to-end scenarios run against Microsoft too."""

    provider = "microsoft"
    mirror_slug = "microsoft-primary"

    def __init__(self, graph: GraphSandbox) -> None:
        self.graph = graph

    def env(self) -> dict[str, str]:
        return graph_env(self.graph)

    def connect(self, server: LockstepServer, user: str) -> None:
        connect_microsoft(server, self.graph, user)

    reconnect = connect

    def create(self, user: str, summary: str, start: datetime, end: datetime) -> str:
        created = self.graph.create_event(_email(user), None, {
            "subject": summary, "start": write_when(start.astimezone(timezone.utc)),
            "end": write_when(end.astimezone(timezone.utc))})
        return str(created["id"])

    def move(self, user: str, remote_id: str, start: datetime, end: datetime) -> None:
        self.graph.update_event(_email(user), remote_id, {
            "start": write_when(start.astimezone(timezone.utc)),
            "end": write_when(end.astimezone(timezone.utc))})

    def rename(self, user: str, remote_id: str, summary: str) -> None:
        self.graph.update_event(_email(user), remote_id, {"subject": summary})

    def delete(self, user: str, remote_id: str) -> None:
        self.graph.delete_event(_email(user), remote_id)

    def events(self, user: str) -> list[Any]:
        from tests.support.remote_accounts import RemoteView

        out = []
        for event in self.graph.stored_events(_email(user)):
            start = "" if event.get("isAllDay") else \
                read_when(event["start"]).strftime("%Y-%m-%dT%H:%M:%SZ")
            out.append(RemoteView(remote_id=str(event["id"]), summary=str(event.get("subject", "")),
                                  start_utc=start, lockstep_uid=lockstep_uid_of(event)))
        return out

    def expire_cursor(self, user: str) -> None:
        self.graph.expire_delta_tokens(_email(user))

    def revoke(self, user: str) -> None:
        self.graph.revoke_refresh_tokens(_email(user))


def _email(user: str) -> str:
    return f"{user}@example.com"
