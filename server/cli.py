"""The ``lockstep`` command line (names fixed by DESIGN.md)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from server import horizon
from server.config import Config, load_config

log = logging.getLogger("lockstep")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lockstep", description=__doc__)
    parser.add_argument("--data", help="data directory (default ./data)")
    parser.add_argument("--config", help="TOML config file")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run CalDAV, the HTTP API and the workers")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--no-workers", action="store_true", help="web only (scale-out)")
    serve.add_argument("--tls-cert", help="PEM certificate: serve HTTPS")
    serve.add_argument("--tls-key", help="PEM private key for --tls-cert")

    demo = commands.add_parser("demo", help="try it: Google/Outlook emulators, seeded techs, on loopback")
    demo.add_argument("--port", type=int, help="port of the Lockstep server (default 5232)")

    commands.add_parser("worker", help="background workers only (scale-out): syncs, pushes, channels, busy index")

    tech = commands.add_parser("tech", help="manage techs").add_subparsers(dest="action", required=True)
    add = tech.add_parser("add", help="create a tech with a CalDAV home and a bookings calendar")
    add.add_argument("username")
    add.add_argument("--name", required=True)
    add.add_argument("--email", required=True)
    add.add_argument("--tz", required=True, help="IANA time zone, e.g. America/Los_Angeles")
    add.add_argument("--hours", default="mon-fri 08:00-17:00", help='e.g. "mon-fri 08:00-17:00"')
    add.add_argument("--password", help="app password (default: generated and printed once)")
    _policy_options(add)
    update = tech.add_parser("update", help="change a tech's details or availability policy")
    update.add_argument("username")
    update.add_argument("--name")
    update.add_argument("--email")
    update.add_argument("--tz", help="IANA time zone")
    update.add_argument("--hours", help='e.g. "mon-fri 08:00-12:00 13:00-17:00; sat 09:00-12:00"')
    _policy_options(update)
    tech.add_parser("list", help="list techs")
    remove = tech.add_parser("remove", help="remove a tech and their calendars")
    remove.add_argument("username")
    password = tech.add_parser("password", help="set or generate a new app password")
    password.add_argument("username")
    password.add_argument("--password")

    connect = commands.add_parser("connect", help="connect a tech's calendar account")
    connect.add_argument("provider", choices=("google", "microsoft", "caldav"))
    connect.add_argument("username")
    connect.add_argument("--url", help="caldav: the server's URL (e.g. https://caldav.fastmail.com/)")
    connect.add_argument("--username", dest="remote_user", metavar="U", help="caldav: the account's user name")
    connect.add_argument("--password", metavar="P", help="caldav: an app password; '-' (the default) "
                         "reads it from standard input or asks for it")

    disconnect = commands.add_parser("disconnect", help="disconnect a tech's calendar account")
    disconnect.add_argument("provider", choices=("google", "microsoft", "caldav"))
    disconnect.add_argument("username")

    calendars = commands.add_parser("calendars", help="list or choose a tech's synced calendars")
    calendars.add_argument("username")
    calendars.add_argument("--select", nargs="+", metavar="ID", help="sync these calendars (and the primary)")
    calendars.add_argument("--primary-only", action="store_true", help="sync the primary calendar only")
    calendars.add_argument("--busy", action="store_true", help="sync every calendar the tech marks busy")
    calendars.add_argument("--bookings-to", metavar="ID", help="write bookings to this calendar (default primary)")
    sync = commands.add_parser("sync", help="sync health and manual syncs").add_subparsers(dest="action", required=True)
    sync.add_parser("status", help="every connection: state, last success, lag, last error")
    now = sync.add_parser("now", help="sync a tech's calendars now")
    now.add_argument("username")

    token = commands.add_parser("token", help="API credentials").add_subparsers(dest="action", required=True)
    create = token.add_parser("create", help="create a credential for booking software")
    create.add_argument("name")
    create.add_argument("--scope", choices=("freebusy", "bookings"), default="freebusy")
    revoke = token.add_parser("revoke", help="delete a credential; it stops working at once")
    revoke.add_argument("name")

    admin = commands.add_parser("admin", help="admin panel users").add_subparsers(dest="action", required=True)
    admin_create = admin.add_parser("create", help="create a panel user; the password is prompted for "
                                                   "(or read from the first line of stdin), never an argument")
    admin_create.add_argument("username")
    return parser


def _policy_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tentative-blocks", choices=("yes", "no"), help="tentative events block time (default no)")
    parser.add_argument("--allday", choices=("working_hours", "whole_day"), help="what an all-day event blocks")
    parser.add_argument("--buffer-before", type=int, metavar="MIN", help="minutes kept free before a booking")
    parser.add_argument("--buffer-after", type=int, metavar="MIN", help="minutes kept free after a booking")
    parser.add_argument("--min-notice", type=int, metavar="MIN", help="earliest bookable slot, minutes from now")


def _settings(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from server.techs import Settings

    blocks = None if args.tentative_blocks is None else args.tentative_blocks == "yes"
    return Settings(tentative_blocks=blocks, allday=args.allday, buffer_before_min=args.buffer_before,
                    buffer_after_min=args.buffer_after, min_notice_min=args.min_notice)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.data, args.config)
        horizon.configure(config.get("freebusy", "horizon_past_days"), config.get("freebusy", "horizon_future_days"))
    except (OSError, ValueError) as exc:
        print(f"lockstep: configuration error: {exc}", file=sys.stderr)
        return 2
    _setup_logging(config)
    try:
        if args.command == "serve":
            from server.serve import serve

            return serve(config, args)
        if args.command == "demo":
            from server.demo import run_demo

            return run_demo(args)
        if args.command == "worker":
            from server.serve import run_workers

            return run_workers(config)
        return _run_admin(config, args)
    except Exception as exc:
        if not _refusal(exc):
            raise
        print(f"lockstep: {exc}", file=sys.stderr)
        return 1


def _refusal(exc: Exception) -> bool:
    """A refused command (printed, exit 1), not a crash. Only server.connections raises
    ConnectError, so it is looked for only once a command has imported that module: importing
    it for every command (Google's client library with it) was half of a CLI call's start-up."""
    from server.techs import AdminError

    connections = sys.modules.get("server.connections")
    return isinstance(exc, AdminError) or (connections is not None and isinstance(exc, connections.ConnectError))


def _run_admin(config: Config, args: argparse.Namespace) -> int:
    from server import techs
    from server.db import open_database
    from server.techs import AdminError

    database = open_database(config)
    dav_url = f"{config.public_url}/dav/"
    if args.command == "tech" and args.action == "add":
        credential = techs.add_tech(
            database, args.username, name=args.name, email=args.email, tz=args.tz,
            hours=args.hours, password=args.password, settings=_settings(args),
        )
        print(f"Created tech {credential.name} ({args.name}).")
        _print_caldav_account(dav_url, credential.name, credential.secret, shown=not args.password)
    elif args.command == "tech" and args.action == "update":
        count = techs.update_tech(database, args.username, name=args.name, email=args.email, tz=args.tz,
                                  hours=args.hours, settings=_settings(args))
        print(f"Updated {args.username}; busy time of {count} calendar item(s) recomputed.")
    elif args.command == "tech" and args.action == "list":
        rows = techs.list_techs(database)
        if not rows:
            print("No techs yet. Add one with: lockstep tech add USER --name N --email E --tz ZONE")
        for tech in rows:
            print(f"{tech.username:<16} {tech.name:<24} {tech.email:<28} {tech.timezone:<22} {tech.working_hours}")
    elif args.command == "tech" and args.action == "remove":
        techs.remove_tech(database, args.username)
        print(f"Removed tech {args.username} and their calendars.")
    elif args.command == "tech" and args.action == "password":
        credential = techs.set_password(database, args.username, args.password)
        print(f"New app password set for {credential.name}.")
        if not args.password:
            print(f"App password:  {credential.secret}   (shown once)")
    elif args.command == "connect" and args.provider == "caldav":
        from server.connections import connect_caldav, key_ring
        from server.security import load_or_create_secret_key

        if not args.url or not args.remote_user:
            raise AdminError("connect caldav needs --url URL --username U (and --password P or -)")
        ring = key_ring(config, load_or_create_secret_key(config.data_dir, config.get("security", "secret_key")))
        connected = connect_caldav(database, config, ring, args.username, args.url, args.remote_user,
                                   _read_password(args.password))
        print(f"Connected {connected.tech} to the CalDAV account {args.remote_user} at {args.url}; "
              "the first import is queued.")
    elif args.command == "connect":
        from server.connections import create_consent_link

        link = create_consent_link(database, config, args.username, args.provider)
        print(f"Send this link to {args.username}; it works once, for one hour:")
        print(link)
    elif args.command == "disconnect":
        from server.caldav_bridge.engine import Bridge
        from server.connections import key_ring
        from server.security import load_or_create_secret_key

        ring = key_ring(config, load_or_create_secret_key(config.data_dir, config.get("security", "secret_key")))
        try:
            removed = Bridge(database, config, ring).disconnect(args.username, args.provider)
        except LookupError as exc:
            raise AdminError(str(exc)) from None
        print(f"Disconnected {args.provider} for {args.username}; {removed} mirrored calendar(s) removed.")
    elif args.command == "calendars":
        from server.sync_admin import choose_calendars

        rows = choose_calendars(database, args.username, select_ids=args.select, primary_only=args.primary_only,
                                busy=args.busy, bookings_to=args.bookings_to)
        if not rows:
            print(f"{args.username} has no connected calendars yet.")
        for remote_id, name, selected in rows:
            print(f"[{'x' if selected else ' '}] {name:<32} {remote_id}")
    elif args.command == "sync" and args.action == "status":
        from server.sync_admin import sync_status

        statuses = sync_status(database)
        if not statuses:
            print("No connections yet. Connect one with: lockstep connect google|microsoft|caldav USER")
        for status in statuses:
            lag = "never" if status.lag_seconds is None else f"{status.lag_seconds:.0f}s ago"
            print(f"{status.tech:<16} {status.provider:<10} {status.state:<13} last success {lag:<12} "
                  f"pending jobs {status.pending_jobs}  {status.last_error[:80]}")
            for name, path, selected, expires in status.calendars:
                if selected:
                    watch = f"push until {expires:%Y-%m-%d %H:%M}" if expires else "polling only"
                    print(f"    /dav/{path}/  ({name}; {watch})")
    elif args.command == "sync" and args.action == "now":
        from server.sync_admin import sync_now

        print(f"Queued {sync_now(database, args.username)} calendar sync(s) for {args.username}.")
    elif args.command == "token" and args.action == "create":
        credential = techs.create_token(database, args.name, args.scope)
        print(f"Created {args.scope} token {credential.name} (shown once).")
        print(f"CalDAV Basic auth: user name {credential.name}, password {credential.secret}")
        print("HTTP API: Authorization: Bearer <the token on the next line>")
        print(f"{credential.name}.{credential.secret}")
    elif args.command == "token" and args.action == "revoke":
        techs.revoke_token(database, args.name)
        print(f"Revoked token {args.name}.")
    elif args.command == "admin" and args.action == "create":
        from admin.cli import create_admin_user

        print(create_admin_user(database, config, args.username))
    database.dispose()
    return 0


def _read_password(given: str | None) -> str:
    """A literal password, or with ``-`` (or none) a prompt on a terminal, else stdin's first line."""
    if given and given != "-":
        return given
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass("App password: ")
    return sys.stdin.readline().rstrip("\r\n")


def _print_caldav_account(dav_url: str, username: str, secret: str, *, shown: bool) -> None:
    print(f"CalDAV server:     {dav_url}")
    print(f"User name:         {username}")
    if shown:
        print(f"App password:      {secret}   (shown once)")
    print(f"Booking calendar:  {dav_url}{username}/bookings/")
    print("iPhone: Settings > Calendar > Accounts > Add Account > Other > Add CalDAV Account;")
    print("        enter the server (host name only is fine), user name and app password.")


def _setup_logging(config: Config) -> None:
    level = getattr(logging, str(config.get("logging", "level")).upper(), logging.INFO)
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    # Radicale logs every request at INFO; keep it to problems unless debugging.
    logging.getLogger("radicale").setLevel(level if level <= logging.DEBUG else logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # OAuth and HTTP client libraries print tokens, codes and headers in their debug output.
    for name in SECRET_LOGGING_LIBRARIES:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))


SECRET_LOGGING_LIBRARIES = ("requests_oauthlib", "oauthlib", "google_auth_oauthlib", "google.auth",
                            "googleapiclient", "msal", "urllib3", "caldav", "niquests", "httpx")


if __name__ == "__main__":
    sys.exit(main())
