"""/metrics and /healthz: the Prometheus text parses, and the numbers move when sync runs.

A real ``lockstep serve`` process syncs with the Google emulator; the scrape is
parsed with prometheus_client's own parser. The database gauges are also checked
against a queue whose contents the test chose, and /healthz against a database
that does not answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.test import Client

from server import jobs
from server.app import create_app
from server.config import load_config
from server.db import Database
from server.metrics import create_registry
from server.sandbox.google import GoogleSandbox
from server.sync_admin import sync_now, sync_status
from tests.support.api import api_for
from tests.support.google_env import connect_google, eventually, google_env
from tests.support.lockstep_server import LockstepServer, free_port, running_server

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 when absent: a counter not yet incremented)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape(server: LockstepServer) -> Samples:
    response = requests.get(server.url + "/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    return parse(response.text)


@pytest.fixture(scope="module")
def google() -> Iterator[GoogleSandbox]:
    with GoogleSandbox() as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def server(backend: str, google: GoogleSandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LockstepServer]:
    with running_server(tmp_path_factory.mktemp(f"metrics-{backend}"), backend,
                        extra_env=google_env(google)) as started:
        yield started


@pytest.fixture(scope="module")
def first_sync(server: LockstepServer, google: GoogleSandbox) -> tuple[Samples, str, str]:
    """A scrape from before a tech connects Google, and that tech (user name, app password)."""
    before = scrape(server)
    user, password = server.add_tech()
    connect_google(server, google, user)
    return before, user, password


def test_metrics_move_when_sync_runs(server: LockstepServer, first_sync: tuple[Samples, str, str]) -> None:
    before, user, password = first_sync
    assert value(before, "lockstep_database_up") == 1

    after = eventually(lambda: (s := scrape(server)) and value(
        s, "lockstep_jobs_run_total", kind="sync_calendar", outcome="done") > value(
        before, "lockstep_jobs_run_total", kind="sync_calendar", outcome="done") and s, what="a sync counted")
    assert value(after, "lockstep_jobs_run_total", kind="initial_import", outcome="done") > value(
        before, "lockstep_jobs_run_total", kind="initial_import", outcome="done")
    assert value(after, "lockstep_connections", provider="google", state="ok") >= 1
    assert ("lockstep_sync_lag_seconds", frozenset({("provider", "google")})) in after
    assert value(after, "lockstep_sync_lag_seconds", provider="google") >= 0
    assert server.log_file.read_text().count(f"sync {user}/google-primary: ") >= 1  # one line per sync cycle

    api = api_for(server, "freebusy")
    count = "lockstep_http_request_duration_seconds_count"
    api_labels = {"endpoint": "/api/v1/freebusy", "method": "GET", "status": "2xx"}
    dav_labels = {"endpoint": "/dav", "method": "PROPFIND", "status": "2xx"}
    api.get("/freebusy", tech=user, start="2026-12-01T00:00:00Z", end="2026-12-02T00:00:00Z").raise_for_status()
    requests.request("PROPFIND", f"{server.dav_url}{user}/", auth=(user, password),
                     headers={"Depth": "0"}).raise_for_status()
    # Observed when the server closes the response, which may be just after the client has it.
    latest = eventually(lambda: (s := scrape(server)) and value(s, count, **dav_labels) > value(
        after, count, **dav_labels) and value(s, count, **api_labels) > value(after, count, **api_labels) and s,
        what="both requests observed")
    assert value(latest, count, **api_labels) == value(after, count, **api_labels) + 1
    assert value(latest, count, **dav_labels) == value(after, count, **dav_labels) + 1
    assert value(latest, "lockstep_http_request_duration_seconds_sum", **api_labels) > value(
        after, "lockstep_http_request_duration_seconds_sum", **api_labels)
    raw_paths = {dict(labels).get("endpoint", "") for name, labels in latest if name == count}
    assert not any(user in endpoint for endpoint in raw_paths), raw_paths  # route templates, not paths


def test_a_rate_limited_sync_counts_a_provider_error(server: LockstepServer, google: GoogleSandbox,
                                                     first_sync: tuple[Samples, str, str]) -> None:
    user = first_sync[1]
    eventually(lambda: [s for s in sync_status(server.database) if s.tech == user and s.last_success],
               what="the first sync")
    labels = {"provider": "google", "kind": "rate_limited"}
    before = scrape(server)
    google.rate_limit(1)
    sync_now(server.database, user)

    def retries(samples: Samples) -> float:
        return sum(v for (name, lbl), v in samples.items()
                   if name == "lockstep_jobs_run_total" and ("outcome", "retry") in lbl)

    # The worker counts the provider error, then the job's outcome: wait until both are visible.
    after = eventually(lambda: (s := scrape(server)) and value(s, "lockstep_provider_errors_total", **labels) > value(
        before, "lockstep_provider_errors_total", **labels) and retries(s) > retries(before) and s,
        what="the provider error and the retried job counted")
    assert value(after, "lockstep_provider_errors_total", **labels) == value(
        before, "lockstep_provider_errors_total", **labels) + 1


def test_healthz_answers_when_the_database_does(server: LockstepServer) -> None:
    response = requests.get(server.url + "/healthz", timeout=5)
    assert response.status_code == 200 and len(response.content) < 100


# -- the database gauges and /healthz against a queue and a database the test controls ------------


def test_jobs_pending_and_failed_by_kind(database: Database) -> None:
    with database.write([]) as session:
        for n in range(3):
            jobs.enqueue(session, "sync_calendar", {"calendar": n})
        jobs.enqueue(session, "push_item", {"path": "x/bookings", "href": "b.ics"})
    doomed = jobs.claim(database, ["push_item"])
    assert doomed is not None
    jobs.fail(database, doomed, "refused", permanent=True)
    samples = parse(generate_latest(create_registry(database)).decode())
    assert value(samples, "lockstep_jobs_pending", kind="sync_calendar") == 3
    assert value(samples, "lockstep_jobs_failed", kind="sync_calendar") == 0
    assert value(samples, "lockstep_jobs_pending", kind="push_item") == 0
    assert value(samples, "lockstep_jobs_failed", kind="push_item") == 1


def test_healthz_is_503_and_metrics_say_so_when_the_database_is_gone(tmp_path: Path) -> None:
    config = load_config(tmp_path / "data", environ={"LOCKSTEP_SECURITY_SECRET_KEY": "k" * 48})
    unreachable = Database(f"postgresql+psycopg://lockstep@127.0.0.1:{free_port()}/nowhere")
    client = Client(create_app(config, unreachable).wsgi)
    health = client.get("/healthz")
    assert health.status_code == 503 and len(health.data) < 100
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert value(parse(metrics.get_data(as_text=True)), "lockstep_database_up") == 0
    unreachable.dispose()
