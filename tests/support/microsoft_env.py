"""A Lockstep server wired to the Graph emulator, and accounts signed in through the real
MSAL auth-code flow against the emulator's consent page."""

from __future__ import annotations

import html
import re
import secrets
from typing import Any
from urllib.parse import urlencode

import requests

from server.providers.oauth_microsoft import MicrosoftSettings, consent_url, exchange
from server.sandbox.graph import GraphSandbox
from tests.support.lockstep_server import LockstepServer


def graph_env(graph: GraphSandbox, **extra: str) -> dict[str, str]:
    return {
        "LOCKSTEP_MICROSOFT_CLIENT_ID": graph.DEFAULT_CLIENT_ID,
        "LOCKSTEP_MICROSOFT_CLIENT_SECRET": graph.DEFAULT_CLIENT_SECRET,
        "LOCKSTEP_MICROSOFT_AUTHORITY": graph.authority,
        "LOCKSTEP_MICROSOFT_GRAPH_URL": graph.graph_url,
        "LOCKSTEP_MICROSOFT_CA_BUNDLE": graph.ca_bundle,
        **extra,
    }


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
