"""Servers as subprocesses on loopback (`mlflow server`, `mlflow models serve`, PostgreSQL): start one in its
own process group, wait until it answers, stop the whole group. Used by the load benchmark and the tests."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_url(url: str, process: subprocess.Popen, seconds: float = 120, log: Path | None = None) -> None:
    """Until `url` answers (any HTTP status counts: a server behind basic-auth answers 401); an exited process
    or the deadline is an error that quotes the end of its log."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[:4]} exited with {process.returncode}{_tail(log)}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {seconds:.0f} s{_tail(log)}")


def _tail(log: Path | None) -> str:
    return f"; log {log}:\n{log.read_text()[-3000:]}" if log is not None and log.is_file() else ""


def start(command: list[str], log: Path, url: str | None = None, env: dict | None = None,
          seconds: float = 120) -> subprocess.Popen:
    """Run `command` in a new process group with its output in `log`; wait for `url` when given."""
    with open(log, "w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
                                   env=env)
    if url is not None:
        try:
            wait_for_url(url, process, seconds, log)
        except BaseException:
            stop(process)
            raise
    return process


def stop(process: subprocess.Popen, signal_number: int = signal.SIGTERM, seconds: float = 20) -> None:
    """Signal the process group; wait for its leader (SIGKILL after `seconds`); then SIGKILL whatever of the
    group is left (workers still shutting down)."""
    try:
        os.killpg(process.pid, signal_number)
        process.wait(timeout=seconds)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        _kill_group(process.pid)
        process.wait()
    _kill_group(process.pid)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


PG_BIN = Path("/usr/lib/postgresql/15/bin")


def postgres_missing() -> str | None:
    """Why PostgreSQL cannot be started here, or None."""
    if not (PG_BIN / "pg_ctl").is_file():
        return f"PostgreSQL 15 is not installed ({PG_BIN})"
    if os.geteuid() == 0:
        import pwd
        import shutil

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a `postgres` user: PostgreSQL refuses to run as root"
        if shutil.which("runuser") is None:
            return "running as root without `runuser`: PostgreSQL refuses to run as root"
    return None


@contextlib.contextmanager
def postgres(databases: tuple[str, ...] = ("mlflow", "optuna")) -> Iterator[str]:
    """A throwaway PostgreSQL server on a free loopback port (trust auth) with `databases`; yields its URL
    (`postgresql+psycopg://postgres@127.0.0.1:<port>`, append `/<database>`). As root it runs as `postgres` in a
    folder that user owns (pytest's temp folders are mode 0700 under root's)."""
    import pwd
    import shutil
    import tempfile

    import psycopg

    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="condpdiff-pg-"))
    if as_postgres:
        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
    port = free_port()
    data = str(folder / "data")

    def run(*command) -> None:
        subprocess.run([*as_postgres, *map(str, command)], check=True, capture_output=True)

    try:
        run(PG_BIN / "initdb", "-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        run(PG_BIN / "pg_ctl", "-D", data, "-l", folder / "postgres.log", "-w", "-o",
            f"-h 127.0.0.1 -p {port} -k {folder} -F", "start")
        with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres",
                             autocommit=True) as connection:
            for database in databases:
                connection.execute(f"CREATE DATABASE {database}")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run([*as_postgres, str(PG_BIN / "pg_ctl"), "-D", data, "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


class TrackingServer:
    """`mlflow server` on `store` with proxied artifacts under `folder`, bound to loopback; it can be killed
    and started again on the same port and store."""

    def __init__(self, store: str, folder: Path, extra: tuple[str, ...] = (), env: dict | None = None):
        self.store, self.folder, self.extra, self.env = store, Path(folder), extra, env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> "TrackingServer":
        self.process = start(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", self.store, "--artifacts-destination", str(self.folder / "artifacts"),
             "--workers", "1", *self.extra], self.folder / "server.log", url=f"{self.url}/health", env=self.env,
            seconds=180)
        return self

    def kill(self) -> None:
        stop(self.process, signal.SIGKILL)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
