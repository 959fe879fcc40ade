"""Servers as subprocesses on loopback (`mlflow server`, `mlflow models serve`, PostgreSQL): start one in its
own process group, wait until it answers, stop the whole group. Used by the load benchmark and the tests."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path


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
    """Signal the process group; SIGKILL it if it has not ended within `seconds`."""
    try:
        os.killpg(process.pid, signal_number)
        process.wait(timeout=seconds)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
