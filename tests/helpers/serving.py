"""`hin serve` as a subprocess on a free loopback port, for the tests that need a real server
(the browser test, shutdown)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from helpers.waiting import wait_until


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _healthy(url: str, server: subprocess.Popen) -> bool:
    if server.poll() is not None:
        raise AssertionError(f"hin serve exited with {server.returncode}: "
                             f"{server.stderr.read().decode()}")
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


def metric(url: str, name: str) -> float | None:
    """The value of metric `name` (a line `name VALUE`) at URL/metrics; None while the
    server refuses the request with a 503 (at its --max-connections)."""
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=20) as answer:
            text = answer.read().decode()
    except urllib.error.HTTPError as refused:
        if refused.code == 503:
            return None
        raise
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert found, f"no metric {name} in {url}/metrics:\n{text}"
    return float(found[1])


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
        wait_until(lambda: _healthy(url, process), f"hin serve to answer {url}/healthz",
                   seconds=120)
        yield url, process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(30)
