"""Start real ``lockstep worker`` processes (the scale-out background workers) for tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.lockstep_server import TEST_HORIZON_PAST_DAYS, horizon_env

READY_LINE = "Lockstep worker started"
START_SECONDS = 90  # as for servers: on a 2-core machine under load 15-20 a start took over 30 s


@dataclass
class LockstepWorker:
    """One ``lockstep worker`` process on ``database_url``.

    ``public_url`` is the address providers call back (the load balancer in
    front of the web nodes): workers open push channels pointing there.
    """

    data_dir: Path
    database_url: str
    public_url: str
    extra_env: dict[str, str] = field(default_factory=dict)
    horizon_past_days: int | None = TEST_HORIZON_PAST_DAYS
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_file(self) -> Path:
        return self.data_dir / "worker.log"

    @property
    def pid(self) -> int:
        assert self.process is not None, "worker not running"
        return self.process.pid

    def owns(self, job_worker: str) -> bool:
        """Whether a job row's ``worker`` column ("host:pid") names this process."""
        return job_worker.rsplit(":", 1)[-1] == str(self.pid)

    def start(self) -> LockstepWorker:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update({**horizon_env(self.horizon_past_days),
                    "LOCKSTEP_DATABASE_URL": self.database_url, "LOCKSTEP_SERVER_PUBLIC_URL": self.public_url,
                    **self.extra_env})
        offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "server.cli", "--data", str(self.data_dir), "worker"],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"lockstep worker exited:\n{self.log_file.read_text()}")
            if READY_LINE in self.log_file.read_bytes()[offset:].decode("utf-8", "replace"):
                return self
            time.sleep(0.1)
        raise RuntimeError(f"lockstep worker did not start:\n{self.log_file.read_text()}")

    def kill(self) -> None:
        """SIGKILL: no clean-up, no lease released (as when a node dies)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None
