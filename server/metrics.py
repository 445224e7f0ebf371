"""Prometheus metrics at ``/metrics``.

Two sources. What this process counts as it happens (provider errors and jobs
run by its workers, HTTP request latency) lives in ``PROCESS_REGISTRY``, not
prometheus_client's global registry, so tests and several apps in one process
stay apart. What the whole deployment shares (queue depth, connection states,
sync lag, deliveries) is read from the database at scrape time by
:class:`DatabaseCollector`, so any node answers for all of them.

Labels are bounded: HTTP latency is labelled by route template (``/dav`` for
all of CalDAV), never by raw path; lag is per provider (the worst connection),
not per tech, so ``/metrics`` names no one.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from typing import Any, Callable

from flask import Flask, Response, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from server import jobs
from server.db import Database
from server.models import Connection, Job
from server.notify_channels import CHANNEL_OF_JOB
from server.providers.base import AuthorizationLost, CursorExpired, PreconditionFailed, ProviderError

UTC = timezone.utc
PROCESS_REGISTRY = CollectorRegistry(auto_describe=True)

PROVIDER_ERRORS = Counter(
    "lockstep_provider_errors", "Failed provider calls seen by this process's sync workers",
    ["provider", "kind"], registry=PROCESS_REGISTRY)
JOBS_RUN = Counter(
    "lockstep_jobs_run", "Jobs run by this process's workers, by outcome (done, retry, dead, dropped, crashed)",
    ["kind", "outcome"], registry=PROCESS_REGISTRY)
HTTP_LATENCY = Histogram(
    "lockstep_http_request_duration_seconds", "Time to answer an HTTP request, by route template",
    ["endpoint", "method", "status"], registry=PROCESS_REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))

CONNECTION_STATES = ("ok", "degraded", "needs_reauth")
METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND", "PROPPATCH", "REPORT",
           "MKCALENDAR", "MKCOL", "MOVE", "COPY", "LOCK", "UNLOCK"}
ROUTE_KEY = "lockstep.route"


# -- provider errors -----------------------------------------------------------------------------
def error_kind(exc: ProviderError) -> str:
    """A small, fixed vocabulary for the ``kind`` label."""
    if isinstance(exc, AuthorizationLost):
        return "authorization_lost"
    if isinstance(exc, CursorExpired):
        return "cursor_expired"
    if isinstance(exc, PreconditionFailed):
        return "precondition_failed"
    status = getattr(exc, "status", None)
    reason = str(getattr(exc, "reason", "") or "").lower()
    if status == 429 or "HTTP 429" in str(exc) or any(
            word in reason for word in ("ratelimit", "toomanyrequests", "throttl")):
        return "rate_limited"
    return "permanent" if exc.permanent else "transient"


def count_provider_error(provider: str, exc: ProviderError) -> None:
    PROVIDER_ERRORS.labels(provider=provider or "unknown", kind=error_kind(exc)).inc()


def count_job(kind: str, outcome: str) -> None:
    JOBS_RUN.labels(kind=kind, outcome=outcome).inc()


# -- gauges from the database --------------------------------------------------------------------
class DatabaseCollector(Collector):
    """Deployment-wide gauges, read when scraped (a few grouped counts)."""

    def __init__(self, database: Database) -> None:
        self._database = database

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("lockstep_database_up", "1 when the database answered this scrape")
        try:
            families = self._read()
        except Exception:  # noqa: BLE001 - a scrape reports the outage instead of failing
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _read(self) -> list[Metric]:
        now = datetime.now(UTC)
        with self._database.read() as session:
            job_rows = session.execute(select(Job.kind, Job.state, func.count()).where(
                Job.state.in_([jobs.READY, jobs.RUNNING, jobs.DEAD])).group_by(Job.kind, Job.state)).all()
            delivery_rows = session.execute(select(Job.kind, Job.state, func.count()).where(
                Job.kind.in_(list(CHANNEL_OF_JOB))).group_by(Job.kind, Job.state)).all()
            connection_rows = session.execute(select(
                Connection.provider, Connection.state, func.count(),
                func.min(func.coalesce(Connection.last_success, Connection.created_at))).group_by(
                Connection.provider, Connection.state)).all()
        pending = GaugeMetricFamily("lockstep_jobs_pending", "Jobs waiting or running, by kind", labels=["kind"])
        failed = GaugeMetricFamily("lockstep_jobs_failed", "Jobs that gave up (dead), by kind", labels=["kind"])
        pending_by: dict[str, int] = {}
        failed_by: dict[str, int] = {}
        for kind, state, count in job_rows:
            target = failed_by if state == jobs.DEAD else pending_by
            target[kind] = target.get(kind, 0) + int(count)
        for kind in sorted(set(pending_by) | set(failed_by)):
            pending.add_metric([kind], pending_by.get(kind, 0))
            failed.add_metric([kind], failed_by.get(kind, 0))

        connections = GaugeMetricFamily("lockstep_connections", "Provider connections by state",
                                        labels=["provider", "state"])
        lag = GaugeMetricFamily("lockstep_sync_lag_seconds",
                                "Seconds since the least recently synced connection of a provider last "
                                "synced (since it was made, if never)", labels=["provider"])
        counts: dict[tuple[str, str], int] = {}
        oldest: dict[str, datetime] = {}
        for provider, state, count, moment in connection_rows:
            counts[(provider, state)] = int(count)
            if moment is not None:
                moment = _aware(moment)
                oldest[provider] = min(oldest.get(provider, moment), moment)
        for provider in sorted({p for p, _ in counts}):
            for state in sorted(set(CONNECTION_STATES) | {s for p, s in counts if p == provider}):
                connections.add_metric([provider, state], counts.get((provider, state), 0))
        for provider, moment in sorted(oldest.items()):
            lag.add_metric([provider], max(0.0, (now - moment).total_seconds()))

        deliveries = GaugeMetricFamily("lockstep_notification_deliveries",
                                       "Notification deliveries by channel and state", labels=["channel", "state"])
        for kind, state, count in sorted(delivery_rows):
            deliveries.add_metric([CHANNEL_OF_JOB[kind], state], int(count))
        return [pending, failed, connections, lag, deliveries]


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class _Forward(Collector):
    """Exposes another registry's metrics through this one."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        return iter(list(self._registry.collect()))


def create_registry(database: Database) -> CollectorRegistry:
    """What one app's /metrics shows: this process's counters and the database's gauges."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Forward(PROCESS_REGISTRY))
    registry.register(DatabaseCollector(database))
    return registry


# -- HTTP ----------------------------------------------------------------------------------------
def install(app: Flask, database: Database) -> None:
    """Serve /metrics from ``app`` and label each request with its route template."""
    registry = create_registry(database)

    @app.before_request
    def _label_route() -> None:
        request.environ[ROUTE_KEY] = request.url_rule.rule if request.url_rule is not None else "unmatched"

    def metrics_view() -> Response:
        return Response(generate_latest(registry), mimetype=None, content_type=CONTENT_TYPE_LATEST)

    app.add_url_rule("/metrics", "metrics", metrics_view, methods=["GET"])


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class Instrumented:
    """WSGI middleware: observes each request's latency once its body has been sent."""

    def __init__(self, app: WSGIApp, *, dav_prefixes: tuple[str, ...] = ("/dav", "/.well-known/")) -> None:
        self._app = app
        self._dav_prefixes = dav_prefixes

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        started = time.perf_counter()
        path = environ.get("PATH_INFO") or "/"
        dav = path.startswith(self._dav_prefixes)  # decided now: the dispatcher rewrites PATH_INFO
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        status = ["500"]

        def _start(status_line: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            status[0] = status_line.split(" ", 1)[0]
            return start_response(status_line, headers, exc_info)

        def observe() -> None:
            endpoint = "/dav" if dav else str(environ.get(ROUTE_KEY, "unmatched"))
            HTTP_LATENCY.labels(endpoint=endpoint, method=method if method in METHODS else "OTHER",
                                status=f"{status[0][:1]}xx").observe(time.perf_counter() - started)

        try:
            body = self._app(environ, _start)
        except BaseException:
            observe()
            raise
        return _ObservedBody(body, observe)


class _ObservedBody:
    """The response iterable, passed through; the observation happens when the server closes it."""

    def __init__(self, body: Iterable[bytes], on_close: Callable[[], None]) -> None:
        self._body = body
        self._on_close = on_close

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._on_close()
