"""Admin panel without a browser: logging in, the rate limit, CSRF, the audit log, tech edits.

The whole WSGI stack (dispatcher, Flask, the panel, the database) runs in the
test process through werkzeug's test client, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import contextlib
import os
import plistlib
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from werkzeug.test import Client, TestResponse

from admin.accounts import create_admin
from server import techs
from server.app import Lockstep, create_app
from server.config import load_config
from server.models import ApiToken, AuditEntry, Conflict, Connection, Tech, TechSettings
from tests.support.lockstep_server import PG_ENV, postgres_schema

PASSWORD = "correct horse battery"
TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


class Panel:
    """A logged-out browser-like client of the panel (cookies kept between requests)."""

    def __init__(self, wsgi: Any, *, base_url: str = "http://localhost", ip: str = "127.0.0.1") -> None:
        self.client = Client(wsgi)
        self.base_url = base_url
        self.ip = ip

    def get(self, path: str, **kwargs: object) -> TestResponse:
        return self.client.get(path, base_url=self.base_url, environ_overrides={"REMOTE_ADDR": self.ip},
                               **kwargs)

    def post(self, path: str, data: dict[str, object], *, csrf: bool = True, **kwargs: object) -> TestResponse:
        if csrf:
            data = {**data, "csrf_token": self.csrf_token()}
        return self.client.post(path, data=data, base_url=self.base_url,
                                environ_overrides={"REMOTE_ADDR": self.ip}, **kwargs)

    def csrf_token(self) -> str:
        page = self.get("/admin/login").get_data(as_text=True)
        match = TOKEN.search(page)
        assert match, page
        return match.group(1)

    def log_in(self, username: str = "boss", password: str = PASSWORD) -> TestResponse:
        return self.post("/admin/login", {"username": username, "password": password, "next": "/admin/"})


@pytest.fixture(scope="module")
def stack(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lockstep]:
    data_dir = tmp_path_factory.mktemp(f"admin-{backend}")
    with _database_url(backend, data_dir) as url:
        config = load_config(data_dir, environ={"LOCKSTEP_DATABASE_URL": url})
        app = create_app(config)
        create_admin(app.database, "boss", PASSWORD)
        yield app
        app.database.dispose()


def _database_url(backend: str, data_dir: Path) -> contextlib.AbstractContextManager[str]:
    if backend == "postgresql":
        return postgres_schema(os.environ[PG_ENV])
    return contextlib.nullcontext(f"sqlite:///{data_dir / 'lockstep.db'}")


@pytest.fixture
def panel(stack: Lockstep) -> Panel:
    client = Panel(stack.wsgi)
    assert client.log_in().status_code == 303
    return client


def _audit(stack: Lockstep, action: str) -> list[AuditEntry]:
    with stack.database.read() as session:
        return list(session.scalars(select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id)))


def _tech_form(**fields: str) -> dict[str, str]:
    form = {"name": "Ana P", "email": "ana@example.com", "timezone": "Europe/Berlin", "allday": "working_hours",
            "buffer_before": "0", "buffer_after": "15", "min_notice": "60",
            "hours_mon": "08:00-12:00 13:00-17:00", "hours_tue": "08:00-17:00", "hours_wed": "",
            "hours_thu": "", "hours_fri": "09:00-13:00", "hours_sat": "", "hours_sun": ""}
    return {**form, **fields}


# --- logging in ---------------------------------------------------------------------------

def test_pages_need_a_login(stack: Lockstep) -> None:
    anonymous = Panel(stack.wsgi)
    response = anonymous.get("/admin/techs")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/admin/login?next=/admin/techs")


def test_login_sets_a_hardened_session_cookie_and_audits(stack: Lockstep) -> None:
    client = Panel(stack.wsgi)
    response = client.log_in()
    assert response.status_code == 303 and response.headers["Location"] == "/admin/"
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("lockstep_admin=")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/admin" in cookie
    assert "Secure" not in cookie  # plain http: a Secure cookie would never come back
    assert "Dashboard" in client.get("/admin/").get_data(as_text=True)
    assert any(e.actor == "boss" for e in _audit(stack, "login"))


def test_cookie_is_secure_over_https(stack: Lockstep) -> None:
    client = Panel(stack.wsgi, base_url="https://localhost")
    token = client.csrf_token()
    response = client.client.post("/admin/login", base_url="https://localhost",
                                  headers={"Referer": "https://localhost/admin/login"},
                                  data={"username": "boss", "password": PASSWORD, "csrf_token": token})
    assert response.status_code == 303
    assert "Secure" in response.headers["Set-Cookie"]


@pytest.mark.parametrize("trusted", [True, False])
def test_cookie_is_secure_behind_a_trusted_https_proxy(stack: Lockstep, trusted: bool) -> None:
    config = load_config(stack.config.data_dir, environ={
        "LOCKSTEP_DATABASE_URL": stack.database.url, "LOCKSTEP_SERVER_TRUST_FORWARDED": str(trusted).lower()})
    behind_proxy = create_app(config, database=stack.database)
    proxy_headers = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.20",
                     "Referer": "https://localhost/admin/login"}
    client = Client(behind_proxy.wsgi)
    token = TOKEN.search(client.get("/admin/login", headers=proxy_headers).get_data(as_text=True))
    assert token is not None
    response = client.post("/admin/login", headers=proxy_headers, environ_overrides={"REMOTE_ADDR": "127.0.0.1"},
                           data={"username": "boss", "password": PASSWORD, "csrf_token": token.group(1)})
    assert response.status_code == 303
    assert ("Secure" in response.headers["Set-Cookie"]) is trusted
    (entry,) = _audit(stack, "login")[-1:]
    assert entry.detail == ("from 198.51.100.20" if trusted else "from 127.0.0.1")


def test_wrong_password_then_rate_limited_per_user_and_address(stack: Lockstep) -> None:
    create_admin(stack.database, "eve-target", PASSWORD)
    client = Panel(stack.wsgi, ip="203.0.113.7")
    for _ in range(5):
        wrong = client.log_in("eve-target", "not the password")
        assert wrong.status_code == 401
        assert "Wrong user name or password" in wrong.get_data(as_text=True)
    limited = client.log_in("eve-target", PASSWORD)  # even the right password waits now
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) > 0
    assert "Too many failed logins" in limited.get_data(as_text=True)
    assert client.get("/admin/").status_code == 302  # not logged in
    elsewhere = Panel(stack.wsgi, ip="198.51.100.9")
    assert elsewhere.log_in("eve-target", PASSWORD).status_code == 303
    assert len([e for e in _audit(stack, "login.failed") if e.target == "eve-target"]) == 5
    assert [e.target for e in _audit(stack, "login.refused")][-1:] == ["eve-target"]


def test_unknown_user_gets_the_same_answer(stack: Lockstep) -> None:
    response = Panel(stack.wsgi, ip="192.0.2.50").log_in("nobody", PASSWORD)
    assert response.status_code == 401
    assert "Wrong user name or password" in response.get_data(as_text=True)


def test_logout_ends_the_session(panel: Panel) -> None:
    assert panel.post("/admin/logout", {}).status_code == 303
    assert panel.get("/admin/").status_code == 302


def test_next_parameter_cannot_leave_the_panel(stack: Lockstep) -> None:
    client = Panel(stack.wsgi)
    response = client.post("/admin/login", {"username": "boss", "password": PASSWORD,
                                            "next": "//evil.example/admin/"})
    assert response.headers["Location"] == "/admin/"


# --- CSRF ---------------------------------------------------------------------------------

def test_post_without_csrf_token_is_refused_and_changes_nothing(stack: Lockstep, panel: Panel) -> None:
    response = panel.post("/admin/techs/new", {**_tech_form(), "username": "nocsrf"}, csrf=False)
    assert response.status_code == 400
    assert "CSRF" in response.get_data(as_text=True)
    with stack.database.read() as session:
        assert session.scalar(select(Tech).where(Tech.username == "nocsrf")) is None
    forged = panel.client.post("/admin/tokens", data={"name": "forged", "scope": "bookings",
                                                      "csrf_token": "not-a-token"})
    assert forged.status_code == 400


def test_csrf_is_scoped_to_the_panel(stack: Lockstep) -> None:
    client = Client(stack.wsgi)
    name, secret = "csrfapi", techs.create_token(stack.database, "csrfapi", "bookings").secret
    techs.add_tech(stack.database, "apitech", name="Api Tech", email="apitech@example.com",
                   tz="UTC")
    booked = client.post("/api/v1/bookings", headers={"Authorization": f"Bearer {name}.{secret}"},
                         json={"tech": "apitech", "start": "2030-01-07T10:00:00Z", "end": "2030-01-07T11:00:00Z",
                               "summary": "API booking"})
    assert booked.status_code == 201, booked.get_data(as_text=True)
    hook = client.post("/hooks/google",
                       headers={"X-Goog-Channel-ID": "unknown", "X-Goog-Resource-State": "exists"})
    assert hook.status_code != 400 or "CSRF" not in hook.get_data(as_text=True)


# --- techs ----------------------------------------------------------------------------------

def test_create_tech_shows_the_password_once_and_audits(stack: Lockstep, panel: Panel) -> None:
    response = panel.post("/admin/techs/new", {**_tech_form(), "username": "ana"})
    body = response.get_data(as_text=True)
    assert response.status_code == 200, body
    secret = re.search(r'id="new-password">([^<]+)<', body).group(1)
    assert len(secret) >= 16
    assert response.headers["Cache-Control"] == "no-store"
    with stack.database.read() as session:
        tech = session.scalar(select(Tech).where(Tech.username == "ana"))
        settings = session.get(TechSettings, tech.id)
    assert tech.timezone == "Europe/Berlin"
    assert tech.working_hours == "mon 08:00-12:00 13:00-17:00; tue 08:00-17:00; fri 09:00-13:00"
    assert (settings.buffer_after_min, settings.min_notice_min, settings.tentative_blocks) == (15, 60, False)
    assert secret not in panel.get("/admin/techs/ana/iphone").get_data(as_text=True)
    (entry,) = [e for e in _audit(stack, "tech.create") if e.target == "ana"]
    assert entry.actor == "boss" and secret not in entry.detail


def test_bad_time_zone_is_refused_with_a_clear_message_and_nothing_saved(stack: Lockstep, panel: Panel) -> None:
    techs.add_tech(stack.database, "bea", name="Bea", email="bea@example.com", tz="America/Chicago")
    before = len(_audit(stack, "tech.update"))
    response = panel.post("/admin/techs/bea", _tech_form(name="Renamed", timezone="Mars/Olympus_Mons"))
    body = response.get_data(as_text=True)
    assert response.status_code == 400
    assert "&#39;Mars/Olympus_Mons&#39; is not an IANA time zone" in body
    assert 'value="Renamed"' in body  # what was typed is kept for correcting
    with stack.database.read() as session:
        tech = session.scalar(select(Tech).where(Tech.username == "bea"))
        assert (tech.name, tech.timezone, tech.working_hours) == ("Bea", "America/Chicago", "mon-fri 08:00-17:00")
    assert len(_audit(stack, "tech.update")) == before


@pytest.mark.parametrize("field, value, message", [
    ("hours_tue", "8-5", "Tuesday hours: &#39;8-5&#39;: times look like 08:00-17:00"),
    ("hours_mon", "13:00-12:00", "the end must be after the start"),
    ("buffer_before", "ten", "buffer before: &#39;ten&#39; is not a whole number of minutes"),
    ("buffer_after", "20000", "buffer after must be 0 to 10080 minutes"),
    ("email", "nope", "is not an e-mail address"),
    ("name", "N" * 201, "the name is longer than 200 characters"),
    ("name", "Nul\x00Byte", "contains a NUL character"),
])
def test_tech_edit_validation(stack: Lockstep, panel: Panel, field: str, value: str, message: str) -> None:
    if "cid" not in {t.username for t in techs.list_techs(stack.database)}:
        techs.add_tech(stack.database, "cid", name="Cid", email="cid@example.com", tz="UTC")
    response = panel.post("/admin/techs/cid", _tech_form(**{field: value}))
    assert response.status_code == 400
    assert message in response.get_data(as_text=True)
    with stack.database.read() as session:
        tech = session.scalar(select(Tech).where(Tech.username == "cid"))
        assert (tech.name, tech.email, tech.working_hours) == ("Cid", "cid@example.com", "mon-fri 08:00-17:00")


def test_edit_saves_and_audits_the_change(stack: Lockstep, panel: Panel) -> None:
    techs.add_tech(stack.database, "dan", name="Dan", email="dan@example.com", tz="UTC")
    form = _tech_form(name="Dan", email="dan@example.com", timezone="Asia/Tokyo", tentative_blocks="on",
                      allday="whole_day")
    response = panel.post("/admin/techs/dan", form)
    assert response.status_code == 303
    assert "Saved." in panel.get(response.headers["Location"]).get_data(as_text=True)
    with stack.database.read() as session:
        tech = session.scalar(select(Tech).where(Tech.username == "dan"))
        settings = session.get(TechSettings, tech.id)
    assert tech.timezone == "Asia/Tokyo" and settings.tentative_blocks and settings.allday == "whole_day"
    (entry,) = [e for e in _audit(stack, "tech.update") if e.target == "dan"]
    assert "timezone: 'UTC' → 'Asia/Tokyo'" in entry.detail


def test_remove_needs_the_name_typed(stack: Lockstep, panel: Panel) -> None:
    techs.add_tech(stack.database, "eli", name="Eli", email="eli@example.com", tz="UTC")
    assert panel.post("/admin/techs/eli/remove", {"confirm": "wrong"}).status_code == 400
    assert panel.post("/admin/techs/eli/remove", {"confirm": "eli"}).status_code == 303
    assert "eli" not in {t.username for t in techs.list_techs(stack.database)}
    assert [e.actor for e in _audit(stack, "tech.remove") if e.target == "eli"] == ["boss"]


def test_password_reset_and_mobileconfig(stack: Lockstep, panel: Panel) -> None:
    from server.credentials import CredentialVerifier

    techs.add_tech(stack.database, "fay", name="Fay", email="fay@example.com", tz="UTC", password="old-pass-1")
    body = panel.post("/admin/techs/fay/password", {}).get_data(as_text=True)
    secret = re.search(r'id="new-password">([^<]+)<', body).group(1)
    verifier = CredentialVerifier(stack.database)
    assert verifier.verify("fay", secret) is not None and verifier.verify("fay", "old-pass-1") is None
    profile = panel.get("/admin/techs/fay/lockstep.mobileconfig")
    assert profile.headers["Content-Type"] == "application/x-apple-aspen-config"
    assert "attachment" in profile.headers["Content-Disposition"]
    plist = plistlib.loads(profile.get_data())
    (account,) = plist["PayloadContent"]
    assert plist["PayloadType"] == "Configuration"
    assert account["PayloadType"] == "com.apple.caldav.account"
    assert account["CalDAVUsername"] == "fay" and "CalDAVPassword" not in account
    assert account["CalDAVPrincipalURL"].endswith("/dav/fay/") and account["CalDAVUseSSL"] is False
    assert [e.target for e in _audit(stack, "tech.password_reset")][-1] == "fay"


def test_mobileconfig_for_https_behind_a_proxy() -> None:
    from admin.mobileconfig import caldav_profile

    profile = plistlib.loads(caldav_profile("https://cal.example.com", "gil", display_name="Gil",
                                            password="abcd-efgh-jkmn-pqrs"))
    (account,) = profile["PayloadContent"]
    assert (account["CalDAVHostName"], account["CalDAVPort"], account["CalDAVUseSSL"]) == \
        ("cal.example.com", 443, True)
    assert account["CalDAVPrincipalURL"] == "https://cal.example.com/dav/gil/"
    assert account["CalDAVPassword"] == "abcd-efgh-jkmn-pqrs"


def test_unknown_tech_is_a_panel_404(panel: Panel) -> None:
    response = panel.get("/admin/techs/nobody-here")
    assert response.status_code == 404 and "Not found" in response.get_data(as_text=True)
    assert response.headers["Content-Type"].startswith("text/html")


# --- tokens, dashboard, conflicts ------------------------------------------------------------

def test_token_created_once_listed_and_revoked(stack: Lockstep, panel: Panel) -> None:
    created = panel.post("/admin/tokens", {"name": "dispatch-app", "scope": "freebusy"}).get_data(as_text=True)
    bearer = re.search(r"Authorization: Bearer ([^<\s]+)", created).group(1)
    api = Client(stack.wsgi)
    assert api.get("/api/v1/techs", headers={"Authorization": f"Bearer {bearer}"}).status_code == 200
    listing = panel.get("/admin/tokens").get_data(as_text=True)
    assert 'data-token="dispatch-app"' in listing and bearer.split(".", 1)[1] not in listing
    assert panel.post("/admin/tokens/dispatch-app/revoke", {}).status_code == 303
    assert api.get("/api/v1/techs", headers={"Authorization": f"Bearer {bearer}"}).status_code == 401
    with stack.database.read() as session:
        assert session.scalar(select(ApiToken).where(ApiToken.name == "dispatch-app")) is None
    assert [e.action for e in _audit(stack, "token.create") + _audit(stack, "token.revoke")
            if e.target == "dispatch-app"] == ["token.create", "token.revoke"]
    assert panel.post("/admin/tokens", {"name": "Bad Name!", "scope": "freebusy"}).status_code == 400


def test_dashboard_marks_troubled_connections(stack: Lockstep, panel: Panel) -> None:
    techs.add_tech(stack.database, "gus", name="Gus", email="gus@example.com", tz="UTC")
    techs.add_tech(stack.database, "hal", name="Hal", email="hal@example.com", tz="UTC")
    with stack.database.write(["gus"]) as session:
        gus = session.scalar(select(Tech).where(Tech.username == "gus"))
        session.add(Connection(tech_id=gus.id, provider="google", state="degraded",
                               last_error="Google answered 503 (backendError)"))
    page = panel.get("/admin/").get_data(as_text=True)
    row = re.search(r'<tr class="([^"]+)" data-tech="gus" data-provider="google">(.*?)</tr>', page, re.S)
    assert row and "trouble" in row.group(1) and "state-degraded" in row.group(1)
    assert "backendError" in row.group(2)
    hal = re.search(r'<tr class="([^"]+)" data-tech="hal" data-provider="">', page)
    assert hal and hal.group(1) == "state-not_connected"


def test_conflict_resolve_is_recorded(stack: Lockstep, panel: Panel) -> None:
    techs.add_tech(stack.database, "ivy", name="Ivy", email="ivy@example.com", tz="UTC")
    with stack.database.write(["ivy"]) as session:
        conflict = Conflict(tech="ivy", booking_uid="gone-booking", other_ref="ivy/google-primary/gone.ics")
        session.add(conflict)
        session.flush()
        conflict_id = conflict.id
    open_page = panel.get("/admin/conflicts").get_data(as_text=True)
    assert 'data-tech="ivy"' in open_page and "(no longer in the calendar)" in open_page
    assert panel.post(f"/admin/conflicts/{conflict_id}/resolve", {"note": "called Ivy"}).status_code == 303
    assert 'data-tech="ivy"' not in panel.get("/admin/conflicts").get_data(as_text=True)
    assert 'data-tech="ivy"' in panel.get("/admin/conflicts?state=resolved").get_data(as_text=True)
    (entry,) = [e for e in _audit(stack, "conflict.resolve") if e.target == "ivy"]
    assert entry.detail == f"conflict {conflict_id}: called Ivy"


def test_audit_page_lists_actions(panel: Panel) -> None:
    page = panel.get("/admin/audit").get_data(as_text=True)
    assert "<code>login</code>" in page


# --- the command line -----------------------------------------------------------------------

def test_admin_create_reads_the_password_from_stdin_never_argv(tmp_path: Path) -> None:
    env = {**os.environ, "LOCKSTEP_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}"}
    command = [sys.executable, "-m", "server.cli", "--data", str(tmp_path), "admin", "create"]
    made = subprocess.run([*command, "root-admin"], input=PASSWORD + "\n", env=env,
                          capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    assert "Created admin user root-admin" in made.stdout and PASSWORD not in made.stdout
    short = subprocess.run([*command, "other"], input="short\n", env=env, capture_output=True, text=True)
    assert short.returncode == 1 and "at least 10 characters" in short.stderr
    again = subprocess.run([*command, "root-admin"], input=PASSWORD + "\n", env=env,
                           capture_output=True, text=True)
    assert again.returncode == 1 and "already exists" in again.stderr
    argv = subprocess.run([*command, "x", "--password", PASSWORD], env=env, capture_output=True, text=True)
    assert argv.returncode == 2
    from server.db import Database
    from server.models import AdminUser

    database = Database(env["LOCKSTEP_DATABASE_URL"])
    with database.read() as session:
        (user,) = session.scalars(select(AdminUser)).all()
        assert user.username == "root-admin" and user.password_hash.startswith("$argon2")
    database.dispose()
