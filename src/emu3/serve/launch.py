"""Run `emu3 serve` as a child process on a free loopback port, for tests, benchmarks and scripts.

`server_process(args)` starts the server, waits until `GET /health` answers, yields its base URL
and stops it on exit (SIGTERM, then SIGKILL if it lingers). A server that dies or never gets ready
raises RuntimeError with the tail of its log. It always binds 127.0.0.1 and uses only the standard
library; it does not send requests beyond the health check.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from typing import Iterator, Sequence


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server_process(args: Sequence[str], *, ready_timeout: float = 120.0) -> Iterator[str]:
    """`emu3 serve ARGS` on 127.0.0.1; yields e.g. 'http://127.0.0.1:40123'."""
    port = free_port()
    cmd = [sys.executable, "-m", "emu3", "serve", *args, "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_ready(proc, url, ready_timeout, log)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_ready(proc: subprocess.Popen, url: str, timeout: float, log) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"emu3 serve exited with status {proc.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"emu3 serve was not ready after {timeout:.0f} s:\n{_tail(log)}")


def _tail(log, size: int = 4000) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")[-size:]
