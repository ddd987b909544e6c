"""`hin serve` as a subprocess on a free loopback port, for the tests that need a real server
(the browser test, shutdown)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_healthy(url: str, server: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"hin serve exited with {server.returncode}: "
                                 f"{server.stderr.read().decode()}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"hin serve did not answer {url}/healthz within {seconds} s")


@contextmanager
def running_server(checkpoint: Path, *flags: str, cwd: Path | None = None):
    """-> (url, process) of `hin serve --checkpoint CHECKPOINT FLAGS`, stopped afterwards."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).parents[2] / "src"), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(
        [sys.executable, "-m", "hin", "serve", "--checkpoint", str(checkpoint), "--port",
         str(port), "--device", "cpu", "--log-level", "warning", *flags],
        cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_healthy(url, process)
        yield url, process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(30)
