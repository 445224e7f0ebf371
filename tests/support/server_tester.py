"""Run the ``caldav-server-tester`` tool (PyPI) against a CalDAV server.

The tool probes a server with a throwaway test calendar (it creates and
deletes its own calendars and events) and reports a support level per
feature.  We use its ``--format hints`` output: a Python dict literal of
*every* probed feature.  (``--format json``/``yaml`` are "compact": they
drop all features whose result equals the library default, e.g. most
``full`` ones, so they cannot show that a basic feature works.)
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

DEFAULT_TIMEOUT = 600.0

# Environment variables through which caldav / calendaring_config would pick
# up a connection or config file other than the one we pass explicitly.
_ISOLATED_ENV_PREFIXES = ("CALDAV_", "JMAP_", "CALENDARING_", "PYTHON_CALDAV_")


class ServerTesterError(RuntimeError):
    """The caldav-server-tester run failed or produced unparsable output."""


def _tester_command() -> list[str]:
    """Command running the tester with the current interpreter's environment."""
    script = Path(sys.executable).parent / "caldav-server-tester"
    if script.is_file():
        return [str(script)]
    return [
        sys.executable,
        "-c",
        "import sys; from caldav_server_tester import check_server_compatibility; "
        "sys.exit(check_server_compatibility())",
    ]


def _tester_env(workdir: Path) -> dict[str, str]:
    """Environment isolated from the user's caldav config and proxies."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_ISOLATED_ENV_PREFIXES)}
    env["HOME"] = str(workdir)
    env["XDG_CONFIG_HOME"] = str(workdir / ".config")
    no_proxy = ",".join(filter(None, [env.get("NO_PROXY", ""), "127.0.0.1,localhost"]))
    env["NO_PROXY"] = env["no_proxy"] = no_proxy
    return env


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def parse_hints_output(stdout: str) -> dict[str, dict[str, Any]]:
    """Parse the ``--format hints`` dict literal into feature -> info dict."""
    start, end = stdout.find("{"), stdout.rfind("}")
    if start < 0 or end < start:
        raise ServerTesterError(f"no feature dict in tester output:\n{_tail(stdout)}")
    try:
        parsed = ast.literal_eval(stdout[start : end + 1])
    except (ValueError, SyntaxError) as exc:
        raise ServerTesterError(f"cannot parse tester output ({exc}):\n{_tail(stdout)}") from exc
    if not isinstance(parsed, dict) or not all(
        isinstance(k, str) and isinstance(v, dict) for k, v in parsed.items()
    ):
        raise ServerTesterError(f"unexpected tester output shape:\n{_tail(stdout)}")
    return parsed


def feature_status(info: dict[str, Any]) -> str:
    """Support status of one feature entry.

    Normally ``info["support"]`` ("full", "unsupported", "fragile", "quirk",
    "broken", "ungraceful", "unknown", ...).  Observation-type features carry
    a ``value`` instead (e.g. ``get-current-user-principal.has-calendar``);
    those map to ``"value=<repr>"``.
    """
    if "support" in info:
        return str(info["support"])
    if "value" in info:
        return f"value={info['value']!r}"
    return "unknown"


def run_caldav_server_tester_details(
    url: str,
    username: str,
    password: str,
    workdir: Path,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    extra_args: list[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run the tester and return feature -> full info dict (support, behaviour, ...).

    Raw stdout/stderr are saved as ``server-tester.out`` / ``server-tester.err``
    in ``workdir``.  Raises :class:`ServerTesterError` on crash, non-zero exit,
    timeout or unparsable output.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [
        *_tester_command(),
        "--caldav-url",
        url,
        "--caldav-username",
        username,
        "--caldav-password",
        password,
        "--format",
        "hints",
        *(extra_args or []),
    ]
    try:
        proc = subprocess.run(
            cmd,
            cwd=workdir,
            env=_tester_env(workdir),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise ServerTesterError(
            f"caldav-server-tester timed out after {timeout}s against {url}"
        ) from exc
    (workdir / "server-tester.out").write_text(proc.stdout, encoding="utf-8")
    (workdir / "server-tester.err").write_text(proc.stderr, encoding="utf-8")
    if proc.returncode != 0:
        raise ServerTesterError(
            f"caldav-server-tester exited with {proc.returncode} against {url}; "
            f"stderr tail:\n{_tail(proc.stderr)}"
        )
    features = parse_hints_output(proc.stdout)
    if not features:
        raise ServerTesterError(f"caldav-server-tester reported no features for {url}")
    return features


def run_caldav_server_tester(
    url: str,
    username: str,
    password: str,
    workdir: Path,
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> dict[str, str]:
    """Run the tester against ``url`` and return feature name -> support status.

    ``url`` is any CalDAV base URL (e.g. ``http://127.0.0.1:PORT/`` for stock
    Radicale or ``http://127.0.0.1:PORT/dav/`` for Lockstep); the tool
    discovers the principal from it.  The user must be allowed to create and
    delete calendars; the tool cleans up after itself.
    """
    details = run_caldav_server_tester_details(url, username, password, workdir, timeout=timeout)
    return {name: feature_status(info) for name, info in sorted(details.items())}
