"""What a server is started with (the `hin serve` flags), checked once: every number finite
and in its range, refused at start in one line."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from hin.config import DecodingConfig
from hin.errors import UsageError
from hin.serve.proxy import trusted_networks

MAX_BEAM_SIZE = 10       # a request may ask for beams 1..10 (cost grows with the beam)
# Decoding a picture and preparing it for the extractors takes about 13 bytes per pixel at
# its peak (measured: RGB copies and DETR's NumPy preparation), so 100 million pixels being
# decoded at once stay near 1.3 GB: one 64 MP picture and room for small ones beside it.
DEFAULT_PIXELS_IN_FLIGHT = 100_000_000
# torch's intra-op threads for the batching worker: 1 served fastest (benchmarks/serve.py
# --threads; docs/serving.md): the decoding pool and the event loop need the other cores.
SERVE_THREADS = 1
HOUR_S = 3600.0

# ServeSettings field -> (flag, smallest, largest): the range each number must lie in.
RANGES: dict[str, tuple[str, float, float]] = {
    "max_batch": ("--max-batch", 1, 1024),
    "max_wait_ms": ("--max-wait-ms", 0, 10_000),
    "max_upload_mb": ("--max-upload-mb", 0.001, 1024),
    "max_body_mb_in_flight": ("--max-body-mb-in-flight", 0.001, 64 * 1024),
    "max_pixels_in_flight": ("--max-pixels-in-flight", 1, 10**12),
    "max_queue": ("--max-queue", 1, 100_000),
    "max_connections": ("--max-connections", 1, 100_000),
    "decode_workers": ("--decode-workers", 1, 256),
    "body_timeout_s": ("--body-timeout", 0.001, HOUR_S),
    "header_timeout_s": ("--header-timeout", 0.001, HOUR_S),
    "idle_timeout_s": ("--idle-timeout", 0.001, HOUR_S),
    "shutdown_timeout_s": ("--shutdown-timeout", 0.001, HOUR_S),
    "port": ("--port", 0, 65535),
}


@dataclass(frozen=True)
class ServeSettings:
    """`decoding` holds the defaults a request may change (beam size, number of captions,
    the options of hin.serve.inputs.OPTIONS) and the settings it may not (maximum length,
    repeats, precision). `forwarded_allow_ips` names the proxies (addresses or networks)
    whose X-Forwarded-* headers are believed; `root_path` the path prefix a proxy serves
    this server under (`/hin`)."""

    checkpoint: str | Path
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    device: str = "auto"
    max_batch: int = 8
    max_wait_ms: float = 10.0
    max_upload_mb: float = 10.0
    keep_uploads: str | Path | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    allow_hosts: tuple[str, ...] = ()
    allow_origins: tuple[str, ...] = ()
    forwarded_allow_ips: tuple[str, ...] = ()
    root_path: str = ""
    max_pixels_in_flight: int = DEFAULT_PIXELS_IN_FLIGHT
    max_queue: int = 64
    max_body_mb_in_flight: float = 128.0
    max_connections: int = 256
    decode_workers: int = 2
    body_timeout_s: float = 30.0
    header_timeout_s: float = 10.0
    idle_timeout_s: float = 5.0
    shutdown_timeout_s: float = 5.0
    vocab: str | Path | None = None              # for checkpoints that record none
    extractor_weights: tuple[tuple[str, str], ...] = ()   # (kind, path): --extractor-weights

    def __post_init__(self) -> None:
        for name, (flag, smallest, largest) in RANGES.items():
            value = getattr(self, name)
            if not (math.isfinite(value) and smallest <= value <= largest):
                raise UsageError(f"{flag} must be from {smallest:g} to {largest:g}, got {value}")
        if self.max_body_mb_in_flight < self.max_upload_mb:
            raise UsageError(f"--max-body-mb-in-flight ({self.max_body_mb_in_flight:g}) must be "
                             f"at least --max-upload-mb ({self.max_upload_mb:g}), or no upload "
                             "of the largest size could ever be read")
        if self.root_path and (not self.root_path.startswith("/") or self.root_path.endswith("/")):
            raise UsageError(f"--root-path must start with '/' and not end with one (such as "
                             f"/hin), got {self.root_path!r}")
        try:
            trusted_networks(self.forwarded_allow_ips)
        except ValueError as error:
            raise UsageError(f"--forwarded-allow-ips: {error} (give addresses or networks such "
                             "as 127.0.0.1 or 10.0.0.0/8, or *)") from None
        if self.decoding.beam_size > MAX_BEAM_SIZE:
            raise UsageError(f"--beam {self.decoding.beam_size} is over the server's limit of "
                             f"{MAX_BEAM_SIZE}")

    @property
    def max_upload_bytes(self) -> int:
        return round(self.max_upload_mb * 2**20)

    @property
    def max_body_bytes_in_flight(self) -> int:
        return round(self.max_body_mb_in_flight * 2**20)
