"""The admin panel in a real headless Chromium (Debian's chromium driven by Playwright).

One ``lockstep serve`` process wired to the Google emulator: log in, add a tech,
connect Google through the emulator's consent page, choose calendars, watch the
connection turn ok, add an overlapping personal event "in Google" and watch the
conflict appear. Every page is saved under docs/screenshots/ for README.md.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests
from sqlalchemy import select

from admin.accounts import create_admin
from server.models import ApiToken, AuditEntry, Connection
from server.sandbox.google import GoogleSandbox
from tests.support.google_env import connect_google, google_env
from tests.support.lockstep_server import LockstepServer, running_server

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
PASSWORD = "correct horse battery"
UTC = timezone.utc

pytestmark = pytest.mark.skipif(shutil.which("chromium") is None and not Path(CHROMIUM).exists(),
                                reason="Debian's chromium is not installed (apt-get install chromium; .ci/run does)")


@pytest.fixture(scope="module")
def google() -> Iterator[GoogleSandbox]:
    with GoogleSandbox() as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def server(google: GoogleSandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LockstepServer]:
    env = google_env(google, LOCKSTEP_SYNC_POLL_SECONDS="2")
    with running_server(tmp_path_factory.mktemp("admin-browser"), "sqlite", extra_env=env) as started:
        create_admin(started.database, "boss", PASSWORD)
        yield started


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: object) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})  # type: ignore[attr-defined]
    context.set_default_timeout(15_000)
    yield context.new_page()
    context.close()


def shot(page: object, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]


def until(page: object, check: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    """Reload the page until ``check()`` holds: the panel is server-rendered, state changes behind it."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)
        page.reload()  # type: ignore[attr-defined]


def log_in(page: object, server: LockstepServer, password: str = PASSWORD) -> object:
    page.goto(server.url + "/admin/")  # type: ignore[attr-defined]
    page.fill("input[name=username]", "boss")  # type: ignore[attr-defined]
    page.fill("input[name=password]", password)  # type: ignore[attr-defined]
    with page.expect_navigation() as navigation:  # type: ignore[attr-defined]
        page.click("button:has-text('Log in')")  # type: ignore[attr-defined]
    return navigation.value


def test_add_tech_connect_google_and_see_a_conflict(page: object, server: LockstepServer,
                                                    google: GoogleSandbox) -> None:
    p = page
    # Two more techs for the dashboard: Ben's Google grant gets revoked, Cy never connects.
    server.add_tech("ben")
    connect_google(server, google, "ben")
    google.revoke_refresh_token(email="ben@example.com")
    google.expire_access_tokens("ben@example.com")
    server.add_tech("cy")
    google.add_user("ana@example.com", "Ana Pereira", time_zone="America/New_York")
    google.add_calendar("ana@example.com", "Team jobs")

    p.goto(server.url + "/admin/")  # type: ignore[attr-defined]
    assert "/admin/login" in p.url  # type: ignore[attr-defined]
    shot(p, "login")
    assert log_in(p, server).status == 200 and p.url.endswith("/admin/")  # type: ignore[attr-defined]

    # Add a tech.
    p.click("nav >> text=Techs")  # type: ignore[attr-defined]
    p.click("text=Add a tech")  # type: ignore[attr-defined]
    p.fill("input[name=username]", "ana")  # type: ignore[attr-defined]
    p.fill("input[name=name]", "Ana Pereira")  # type: ignore[attr-defined]
    p.fill("input[name=email]", "ana@example.com")  # type: ignore[attr-defined]
    p.select_option("select[name=timezone]", "America/New_York")  # type: ignore[attr-defined]
    p.fill("input[name=hours_sat]", "09:00-12:00")  # type: ignore[attr-defined]
    p.fill("input[name=buffer_after]", "15")  # type: ignore[attr-defined]
    shot(p, "tech-new")
    p.click("button:has-text('Add tech')")  # type: ignore[attr-defined]
    password = p.inner_text("#new-password").strip()  # type: ignore[attr-defined]
    assert re.fullmatch(r"[a-z0-9]{4}(-[a-z0-9]{4}){3}", password)
    assert requests.request("PROPFIND", f"{server.dav_url}ana/", auth=("ana", password),
                            headers={"Depth": "0"}).status_code == 207
    shot(p, "iphone")

    # Connect Google: the real consent flow, through the emulator's consent page.
    p.goto(f"{server.url}/admin/techs/ana/connections")  # type: ignore[attr-defined]
    p.click("button:has-text('Connect Google')")  # type: ignore[attr-defined]
    assert "Google Accounts (sandbox)" in p.title()  # type: ignore[attr-defined]
    assert p.input_value("select[name=email]") == "ana@example.com"  # type: ignore[attr-defined]
    shot(p, "google-consent")
    p.click("button:has-text('Allow')")  # type: ignore[attr-defined]
    assert "is now connected for ana" in p.inner_text("body")  # type: ignore[attr-defined]

    # Choose calendars: the primary and "Team jobs"; bookings stay in the primary.
    p.goto(f"{server.url}/admin/techs/ana/connections")  # type: ignore[attr-defined]
    until(p, lambda: p.locator("text=Team jobs").count(), "the calendar list")  # type: ignore[attr-defined]
    p.check("input[name=selection][value=chosen]")  # type: ignore[attr-defined]
    p.check("input[aria-label='sync Team jobs']")  # type: ignore[attr-defined]
    p.click("button:has-text('Save calendar choice')")  # type: ignore[attr-defined]
    assert "syncing 2 calendar(s)" in p.inner_text(".message.notice")  # type: ignore[attr-defined]
    until(p, lambda: p.locator("code:has-text('/dav/ana/google-team-jobs/')").count(), "the Team jobs mirror")  # type: ignore[attr-defined]
    shot(p, "connections")

    # The dashboard shows the connection ok, with a last success.
    p.goto(server.url + "/admin/")  # type: ignore[attr-defined]
    row = "tr[data-tech=ana][data-provider=google]"
    until(p, lambda: "state-ok" in (p.get_attribute(row, "class") or "")  # type: ignore[attr-defined]
          and p.inner_text(f"{row} td.lag") != "never", "the connection to be ok")  # type: ignore[attr-defined]
    until(p, lambda: "needs_reauth" in (p.get_attribute("tr[data-tech=ben]", "class") or ""),  # type: ignore[attr-defined]
          "Ben's revoked grant to show")
    assert "trouble" in p.get_attribute("tr[data-tech=ben]", "class")  # type: ignore[attr-defined]
    assert "invalid_grant" in p.inner_text("tr[data-tech=ben] td.error-text")  # type: ignore[attr-defined]
    assert p.get_attribute("tr[data-tech=cy]", "class") == "state-not_connected"  # type: ignore[attr-defined]
    shot(p, "dashboard")

    # An API token from the panel; the secret is shown once.
    p.click("nav >> text=API tokens")  # type: ignore[attr-defined]
    p.fill("input[name=name]", "booking-app")  # type: ignore[attr-defined]
    p.select_option("select[name=scope]", "bookings")  # type: ignore[attr-defined]
    p.click("button:has-text('Create token')")  # type: ignore[attr-defined]
    bearer = p.inner_text("#bearer").split("Bearer ", 1)[1].strip()  # type: ignore[attr-defined]
    shot(p, "tokens")

    # A booking, then an overlapping personal event created on the Google side.
    day = (datetime.now(UTC) + timedelta(days=2)).replace(hour=15, minute=0, second=0, microsecond=0)
    booked = requests.post(server.url + "/api/v1/bookings", headers={"Authorization": f"Bearer {bearer}"},
                           json={"tech": "ana", "start": f"{day:%Y-%m-%dT%H:%M:%SZ}",
                                 "end": f"{day + timedelta(hours=1):%Y-%m-%dT%H:%M:%SZ}",
                                 "summary": "Replace water heater", "location": "12 Elm St"})
    assert booked.status_code == 201, booked.text
    google.create_event("ana@example.com", {
        "summary": "Dentist",
        "start": {"dateTime": f"{day + timedelta(minutes=30):%Y-%m-%dT%H:%M:%SZ}"},
        "end": {"dateTime": f"{day + timedelta(minutes=90):%Y-%m-%dT%H:%M:%SZ}"}})

    p.click("nav >> text=Conflicts")  # type: ignore[attr-defined]
    card = "article.conflict[data-tech=ana]"
    until(p, lambda: p.locator(card).count(), "the conflict in the panel")  # type: ignore[attr-defined]
    booking_side = p.inner_text(f"{card} section.booking")  # type: ignore[attr-defined]
    personal_side = p.inner_text(f"{card} section.personal")  # type: ignore[attr-defined]
    local = day.astimezone(__import__("zoneinfo").ZoneInfo("America/New_York"))
    assert "Replace water heater" in booking_side and f"{local:%Y-%m-%d %H:%M}" in booking_side
    assert "Dentist" in personal_side and f"{local + timedelta(minutes=30):%H:%M}" in personal_side
    shot(p, "conflicts")
    p.fill(f"{card} input[name=note]", "Ana moves the dentist")  # type: ignore[attr-defined]
    p.click(f"{card} button:has-text('Mark resolved')")  # type: ignore[attr-defined]
    assert p.locator(card).count() == 0  # type: ignore[attr-defined]
    p.click(".subnav a:has-text('Resolved')")  # type: ignore[attr-defined]
    assert p.locator(card).count() == 1  # type: ignore[attr-defined]

    # The booking reached Google: its sync status says so.
    p.click("nav >> text=Bookings")  # type: ignore[attr-defined]
    until(p, lambda: p.locator("text=google: synced").count(), "the booking synced to Google")  # type: ignore[attr-defined]
    assert "Replace water heater" in p.inner_text("main")  # type: ignore[attr-defined]
    shot(p, "bookings")

    p.click("nav >> text=Notifications")  # type: ignore[attr-defined]
    assert p.locator("tr.kind-conflict").count() >= 1  # type: ignore[attr-defined]
    shot(p, "notifications")

    p.goto(f"{server.url}/admin/techs/ana")  # type: ignore[attr-defined]
    assert p.input_value("select[name=timezone]") == "America/New_York"  # type: ignore[attr-defined]
    assert p.input_value("input[name=hours_sat]") == "09:00-12:00"  # type: ignore[attr-defined]
    shot(p, "tech-edit")

    p.click("nav >> text=Audit log")  # type: ignore[attr-defined]
    shot(p, "audit")
    with server.database.read() as session:
        done = {(e.actor, e.action, e.target) for e in session.scalars(select(AuditEntry))}
    assert {("boss", "tech.create", "ana"), ("boss", "connection.link", "ana"), ("boss", "calendars.choose", "ana"),
            ("boss", "token.create", "booking-app"), ("boss", "conflict.resolve", "ana")} <= done


def test_add_caldav_account(page: object, server: LockstepServer,
                            tmp_path_factory: pytest.TempPathFactory) -> None:
    """The CalDAV form against a real second server (a stock Radicale, like iCloud or Fastmail)."""
    from tests.support.caldav_env import radicale_server

    with radicale_server(tmp_path_factory.mktemp("remote-caldav")) as remote:
        remote.new_calendar("Personal")
        server.add_tech("dee")
        assert log_in(page, server).status == 200  # type: ignore[attr-defined]
        p = page
        p.goto(f"{server.url}/admin/techs/dee/connections")  # type: ignore[attr-defined]
        p.click("summary:has-text('Add CalDAV account')")  # type: ignore[attr-defined]
        p.fill("input[name=url]", remote.url)  # type: ignore[attr-defined]
        p.fill("input[name=account]", remote.username)  # type: ignore[attr-defined]
        p.fill("input[name=password]", "not-the-app-password")  # type: ignore[attr-defined]
        p.click("button:has-text('Add CalDAV account')")  # type: ignore[attr-defined]
        assert "refused the user name or password" in p.inner_text(".message.error")  # type: ignore[attr-defined]
        with server.database.read() as session:
            assert not session.scalars(select(Connection).where(Connection.provider == "caldav")).all()
        assert p.input_value("input[name=url]") == remote.url  # kept open and filled for a second try  # type: ignore[attr-defined]
        p.fill("input[name=password]", remote.password)  # type: ignore[attr-defined]
        p.click("button:has-text('Add CalDAV account')")  # type: ignore[attr-defined]
        assert "CalDAV account connected" in p.inner_text(".message.notice")  # type: ignore[attr-defined]
        until(p, lambda: p.locator("code:has-text('/dav/dee/caldav-')").count(), "the CalDAV mirror")  # type: ignore[attr-defined]
        shot(p, "connections-caldav")
        with server.database.read() as session:
            (connection,) = session.scalars(select(Connection).where(Connection.provider == "caldav")).all()
            assert remote.password not in connection.credentials  # encrypted at rest
        p.click("button:has-text('Disconnect CalDAV account')")  # type: ignore[attr-defined]
        assert "disconnected" in p.inner_text(".message.notice")  # type: ignore[attr-defined]
        with server.database.read() as session:
            assert not session.scalars(select(Connection).where(Connection.provider == "caldav")).all()


def test_post_without_csrf_token_is_refused(server: LockstepServer) -> None:
    session = requests.Session()
    token = re.search(r'name="csrf_token" value="([^"]+)"',
                      session.get(server.url + "/admin/login").text).group(1)  # type: ignore[union-attr]
    logged_in = session.post(server.url + "/admin/login", allow_redirects=False,
                             data={"username": "boss", "password": PASSWORD, "csrf_token": token})
    assert logged_in.status_code == 303
    refused = session.post(server.url + "/admin/tokens", data={"name": "sneaky", "scope": "bookings"})
    assert refused.status_code == 400 and "CSRF" in refused.text
    with server.database.read() as db:
        assert db.scalar(select(ApiToken).where(ApiToken.name == "sneaky")) is None
    fresh = re.search(r'name="csrf_token" value="([^"]+)"',  # the login started a new session
                      session.get(server.url + "/admin/tokens").text).group(1)  # type: ignore[union-attr]
    accepted = session.post(server.url + "/admin/tokens", data={"name": "legit", "scope": "freebusy",
                                                                "csrf_token": fresh})
    assert accepted.status_code == 200 and 'id="bearer"' in accepted.text


def test_wrong_passwords_are_rate_limited(page: object, server: LockstepServer) -> None:
    for _ in range(5):
        response = log_in(page, server, "wrong password")
        assert response.status == 401  # type: ignore[attr-defined]
        assert "Wrong user name or password" in page.inner_text(".message.error")  # type: ignore[attr-defined]
    response = log_in(page, server, PASSWORD)
    assert response.status == 429  # type: ignore[attr-defined]
    assert "Too many failed logins" in page.inner_text(".message.error")  # type: ignore[attr-defined]
    shot(page, "login-rate-limited")


def test_dashboard_on_a_phone(browser: object, server: LockstepServer) -> None:
    context = browser.new_context(viewport={"width": 375, "height": 812}, is_mobile=True,  # type: ignore[attr-defined]
                                  has_touch=True, device_scale_factor=2)
    page = context.new_page()
    try:
        # A phone has its own address in real life; here the rate limit of the test above must not
        # apply, so this user name has its own budget.
        create_admin(server.database, "phone-boss", PASSWORD)
        page.goto(server.url + "/admin/")
        page.fill("input[name=username]", "phone-boss")
        page.fill("input[name=password]", PASSWORD)
        page.click("button:has-text('Log in')")
        page.wait_for_selector("h1:has-text('Sync health')")
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        row = page.locator("tr[data-tech=ana]").first
        box = row.bounding_box()
        assert box is not None and box["width"] <= 375
        assert page.locator("tr[data-tech=ana] td[data-label=State]").first.is_visible()
        shot(page, "dashboard-phone")
        page.goto(server.url + "/admin/conflicts?state=resolved")
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        shot(page, "conflicts-phone")
    finally:
        context.close()
