"""Configuration (server/config.py) and the files that document or package it:
config/lockstep.example.toml must list every option, and the Dockerfile must keep
the properties docs/deploy.md promises (Docker itself is not needed to check them)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from server.config import SCHEMA, load_config
from tests.support.lockstep_server import LockstepServer, free_port

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "lockstep.example.toml"
DEFAULTS = {section: {key: option.default for key, option in options.items()} for section, options in SCHEMA.items()}


def _clean_env(**extra: str) -> dict[str, str]:
    """The process environment without the caller's own LOCKSTEP_* settings."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("LOCKSTEP_")}
    env.update(extra)
    return env


# --- the example file ---------------------------------------------------------------------


def test_example_lists_every_option_with_its_environment_variable() -> None:
    text = EXAMPLE.read_text()
    parsed = tomllib.loads(text)
    missing = [f"[{s}] {k}" for s, options in SCHEMA.items() for k in options if k not in parsed.get(s, {})]
    assert not missing, f"add to {EXAMPLE.name}: {missing}"
    undocumented = [
        f"LOCKSTEP_{s.upper()}_{k.upper()}" for s, options in SCHEMA.items() for k in options
        if f"LOCKSTEP_{s.upper()}_{k.upper()}" not in text
    ]
    assert not undocumented, f"mention in {EXAMPLE.name}: {undocumented}"


def test_example_loads_and_states_the_defaults(tmp_path: Path) -> None:
    config = load_config(tmp_path, EXAMPLE, environ={})
    assert config.values == DEFAULTS
    assert config.values == load_config(tmp_path, environ={}).values
    assert config.database_url == f"sqlite:///{tmp_path.resolve() / 'lockstep.db'}"
    assert config.public_url == "http://127.0.0.1:5232"


# --- precedence ---------------------------------------------------------------------------


def test_environment_wins_over_the_file(tmp_path: Path) -> None:
    config_file = tmp_path / "lockstep.toml"
    config_file.write_text(
        '[server]\nport = 8000\ntrust_forwarded = false\npublic_url = "https://file.example"\n'
        '[database]\nurl = "sqlite:////tmp/file.db"\n[logging]\nlevel = "debug"\n'
    )
    env = {
        "LOCKSTEP_CONFIG": str(config_file),
        "LOCKSTEP_DATA": str(tmp_path / "from-env"),
        "LOCKSTEP_SERVER_PORT": "9000",
        "LOCKSTEP_SERVER_TRUST_FORWARDED": "yes",
        "LOCKSTEP_DATABASE_URL": "postgresql://lockstep:pw@db.internal/lockstep",
    }
    config = load_config(environ=env)
    assert config.get("server", "port") == 9000
    assert config.get("server", "trust_forwarded") is True
    assert config.database_url == "postgresql+psycopg://lockstep:pw@db.internal/lockstep"
    assert config.get("logging", "level") == "debug"  # from the file: no variable set
    assert config.public_url == "https://file.example"
    assert config.data_dir == (tmp_path / "from-env").resolve()
    # --data (the argument) beats LOCKSTEP_DATA; --config beats LOCKSTEP_CONFIG.
    assert load_config(tmp_path / "arg", EXAMPLE, environ=env).data_dir == (tmp_path / "arg").resolve()
    assert load_config(tmp_path, EXAMPLE, environ=env).get("logging", "level") == "info"


def test_public_url_follows_tls(tmp_path: Path) -> None:
    config = load_config(tmp_path, environ={"LOCKSTEP_SERVER_TLS_CERT": "c.pem", "LOCKSTEP_SERVER_PORT": "8443"})
    assert config.public_url == "https://127.0.0.1:8443"


# --- mistakes get a clear error -----------------------------------------------------------

BAD_FILES = {
    '[serverr]\nport = 1\n': r"unknown config section\(s\): serverr",
    'port = 5232\n': r"unknown config section\(s\): port",
    '[server]\nprot = 1\n': r"unknown option\(s\) in \[server\]: prot",
    '[server]\nport = "eighty"\n': r"\[server\] port: ",
    '[server]\ntrust_forwarded = "maybe"\n': r"\[server\] trust_forwarded: not a boolean",
    'server = 1\n': r"server must be a \[server\] section",
    '[server\nport = 1\n': r"lockstep.toml: not valid TOML",
}


@pytest.mark.parametrize("content", BAD_FILES)
def test_bad_config_file_is_a_clear_error(tmp_path: Path, content: str) -> None:
    config_file = tmp_path / "lockstep.toml"
    config_file.write_text(content)
    with pytest.raises(ValueError, match=BAD_FILES[content]):
        load_config(tmp_path, config_file, environ={})


def test_bad_environment_value_names_the_option(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\[server\] threads: "):
        load_config(tmp_path, environ={"LOCKSTEP_SERVER_THREADS": "many"})


def test_cli_reports_configuration_errors(tmp_path: Path) -> None:
    config_file = tmp_path / "lockstep.toml"
    config_file.write_text("[server]\nprot = 5232\n")
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "--data", str(tmp_path), "--config", str(config_file), "tech", "list"],
        capture_output=True, text=True, timeout=60, env=_clean_env(), cwd=ROOT,
    )
    assert result.returncode == 2
    assert "configuration error: unknown option(s) in [server]: prot" in result.stderr
    assert "Traceback" not in result.stderr


# --- the Dockerfile -----------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = (line.strip() for line in text.splitlines())
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines if line and not line.startswith("#")
    ]


def _only(instructions: list[tuple[str, str]], name: str) -> str:
    values = [value for key, value in instructions if key == name]
    assert values, f"Dockerfile has no {name}"
    return values[-1]


def test_dockerfile_properties() -> None:
    instructions = dockerfile_instructions()
    assert _only(instructions, "FROM").startswith("python:3.11-slim")
    assert _only(instructions, "USER").split(":")[0] not in ("root", "0")
    assert "5232" in _only(instructions, "EXPOSE").split()
    assert "/data" in json.loads(_only(instructions, "VOLUME"))
    env = dict(pair.split("=", 1) for key, value in instructions if key == "ENV" for pair in shlex.split(value))
    assert env["LOCKSTEP_DATA"] == "/data" and env["LOCKSTEP_SERVER_HOST"] == "0.0.0.0"
    assert json.loads(_only(instructions, "CMD")) == ["lockstep", "serve"]
    installs = [value for key, value in instructions if key == "RUN" and "pip install" in value]
    assert any(re.search(r"pip install (--no-deps )?\.(\s|$)", value) for value in installs)
    assert not any("[test]" in value or " -e " in value for value in installs)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "data", "tests"} <= set(ignored)
    assert not {"server", "pyproject.toml", "README.md", "admin"} & set(ignored)


def test_dockerfile_healthcheck_probes_healthz(server: LockstepServer) -> None:
    """The HEALTHCHECK command itself, run here: 0 against a live server, not 0 without one."""
    healthcheck = _only(dockerfile_instructions(), "HEALTHCHECK")
    command = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert command[0] == "python" and "/healthz" in command[-1]
    argv = [sys.executable, *command[1:]]
    live = subprocess.run(argv, env=_clean_env(LOCKSTEP_SERVER_PORT=str(server.port)), capture_output=True, timeout=30)
    assert live.returncode == 0, live.stderr
    dead = subprocess.run(argv, env=_clean_env(LOCKSTEP_SERVER_PORT=str(free_port())), capture_output=True, timeout=30)
    assert dead.returncode != 0
