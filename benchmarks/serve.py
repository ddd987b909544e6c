"""`hin serve` under load: requests/s, latency percentiles and the server's peak memory, with
dynamic batching and one request at a time (--max-batch 1), each with torch's intra-op
threads at 1 (hin serve's default) and at torch's default (the machine's cores).
With --memory instead: 8 concurrent uploads of a 7999x7999 PNG (64 MP, ~200 KB) and one
small request sent meanwhile: every status, the small request's latency and the server's
peak RSS (the goal: <= 2.5 GiB, all answered 200/429/503, the small one within 5 s).

Starts `hin serve` as a subprocess on a free loopback port, sends a bounded number of
requests (default 200 from 16 concurrent clients, raw PNG bodies, keep-alive connections)
after a short warm-up, and stops the server. Without --checkpoint it builds a demo-sized
model that captions pictures: HIN with the synthetic demo's sizes (the synth_xe config:
2 layers, d_model 128, 4 heads, d_ff 256) over the tests' tiny random CLIP and DETR
extractors, taught one five-word caption; the pictures are 64x64 like the synthetic world's.
Usage: python benchmarks/serve.py [--checkpoint CKPT] [--requests 200] [--clients 16] [--memory]
"""

from __future__ import annotations

import argparse
import http.client
import io
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from extract_models import write_picture_checkpoint  # noqa: E402

DEMO_SIZES = {"num_layers": 2, "d_model": 128, "num_heads": 4, "d_ff": 256}
PICTURE_SIDE = 64


def pictures(count: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    encoded = []
    for _ in range(count):
        buffer = io.BytesIO()
        pixels = rng.integers(0, 256, (PICTURE_SIDE, PICTURE_SIDE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    return encoded


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(checkpoint: Path, port: int, args: argparse.Namespace,
                 max_batch: int, threads: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "hin", "serve", "--checkpoint", str(checkpoint),
               "--port", str(port), "--max-batch", str(max_batch), "--max-wait-ms",
               str(args.max_wait_ms), "--device", args.device, "--precision", args.precision,
               "--threads", str(threads), "--log-level", "warning"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"hin serve exited: {server.stderr.read().decode()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit("hin serve did not start within 300 s")


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set (VmHWM), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load(port: int, bodies: list[bytes], requests: int, clients: int, beam: int) -> dict:
    """`requests` POSTs from `clients` threads -> throughput and latency percentiles."""
    latencies: list[float] = []
    failures: list[str] = []
    counter = iter(range(requests))
    lock = threading.Lock()

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                break
            began = time.perf_counter()
            connection.request("POST", f"/v1/captions?beam_size={beam}", body=bodies[index % len(bodies)],
                               headers={"Content-Type": "image/png"})
            answer = connection.getresponse()
            text = answer.read()
            took = time.perf_counter() - began
            with lock:
                latencies.append(took)
                if answer.status != 200:
                    failures.append(f"{answer.status} {text[:200]!r}")
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - began
    if failures:
        raise SystemExit(f"{len(failures)} requests failed, e.g. {failures[0]}")
    p50, p95, p99 = np.percentile(np.array(latencies) * 1000, [50, 95, 99])
    return {"requests_per_s": requests / seconds, "p50": p50, "p95": p95, "p99": p99}


def big_picture(side: int = 7999) -> bytes:
    """A flat-coloured side x side PNG: 64 MP that compress to ~200 KB."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def memory(checkpoint: Path, args: argparse.Namespace) -> None:
    """The --memory scenario (module docstring)."""
    big, small = big_picture(), pictures(1)[0]
    port = free_port()
    server = start_server(checkpoint, port, args, args.max_batch, 1)
    results: dict[str, object] = {}

    def post(name: str, body: bytes) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        began = time.perf_counter()
        connection.request("POST", "/v1/captions", body=body, headers={"Content-Type": "image/png"})
        answer = connection.getresponse()
        answer.read()
        results[name] = (answer.status, time.perf_counter() - began)

    try:
        load(port, [small], 4, 2, args.beam)                        # warm-up
        base = peak_rss_mib(server.pid)
        threads = [threading.Thread(target=post, args=(f"big{i}", big)) for i in range(8)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        post("small", small)
        for thread in threads:
            thread.join()
        peak = peak_rss_mib(server.pid)
    finally:
        server.terminate()
        server.wait(60)
    statuses = sorted(status for name, (status, _) in results.items() if name != "small")
    small_status, small_s = results["small"]
    print(f"8 x 7999x7999 PNG ({len(big) / 1e3:.0f} KB each): statuses {statuses}; small request "
          f"{small_status} in {small_s:.2f} s; peak RSS {peak:.0f} MiB ({peak / 1024:.2f} GiB; "
          f"{base:.0f} MiB before)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="a checkpoint that captions pictures")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--beam", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"])
    parser.add_argument("--memory", action="store_true", help="the 64 MP memory scenario")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="hin-serve-bench-") as temporary:
        checkpoint = args.checkpoint
        if checkpoint is None:
            checkpoint, _, _ = write_picture_checkpoint(Path(temporary), {"1.png": (64, 64)},
                                                        hin_sizes=DEMO_SIZES)
        print(f"{cpu_model()}, {os.cpu_count()} CPUs, load average "
              f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}")
        if args.memory:
            memory(checkpoint, args)
            return
        bodies = pictures(32)
        print(f"checkpoint {checkpoint}; {args.requests} requests from {args.clients} clients, "
              f"{PICTURE_SIDE}x{PICTURE_SIDE} PNGs, beam {args.beam}, {args.device}, "
              f"{args.precision}")
        rows = []
        for threads in (1, os.cpu_count()):
            for max_batch in (args.max_batch, 1):
                port = free_port()
                server = start_server(checkpoint, port, args, max_batch, threads)
                try:
                    load(port, bodies, 2 * args.clients, args.clients, args.beam)     # warm-up
                    figures = load(port, bodies, args.requests, args.clients, args.beam)
                    figures["peak_mib"] = peak_rss_mib(server.pid)
                finally:
                    server.terminate()
                    server.wait(60)
                rows.append((threads, max_batch, figures))

    print(f"{'threads':>7} {'max-batch':>9} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} "
          f"{'p99 ms':>8} {'peak RSS MiB':>13}")
    for threads, max_batch, f in rows:
        print(f"{threads:>7} {max_batch:>9} {f['requests_per_s']:8.1f} {f['p50']:8.0f} "
              f"{f['p95']:8.0f} {f['p99']:8.0f} {f['peak_mib']:13.0f}")
    print(f"load average now {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


if __name__ == "__main__":
    main()
