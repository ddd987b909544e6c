"""What a server is started with (the `hin serve` flags), checked once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hin.config import DecodingConfig
from hin.errors import UsageError

MAX_BEAM_SIZE = 10       # a request may ask for beams 1..10 (cost grows with the beam)
# Decoding a picture and preparing it for the extractors takes about 13 bytes per pixel at
# its peak (measured: RGB copies and DETR's NumPy preparation), so 100 million pixels being
# decoded at once stay near 1.3 GB: one 64 MP picture and room for small ones beside it.
DEFAULT_PIXELS_IN_FLIGHT = 100_000_000
# torch's intra-op threads for the batching worker: 1 served fastest (benchmarks/serve.py
# --threads; docs/serving.md): the decoding pool and the event loop need the other cores.
SERVE_THREADS = 1


@dataclass(frozen=True)
class ServeSettings:
    """`decoding` holds the defaults a request may change (beam size, number of captions,
    the options of hin.serve.inputs.OPTIONS) and the settings it may not (maximum length,
    repeats, precision)."""

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
    max_pixels_in_flight: int = DEFAULT_PIXELS_IN_FLIGHT
    max_queue: int = 64
    decode_workers: int = 2
    body_timeout_s: float = 30.0
    vocab: str | Path | None = None              # for checkpoints that record none
    extractor_weights: tuple[tuple[str, str], ...] = ()   # (kind, path): --extractor-weights

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise UsageError(f"--max-batch must be at least 1, got {self.max_batch}")
        if self.max_wait_ms < 0:
            raise UsageError(f"--max-wait-ms cannot be negative, got {self.max_wait_ms}")
        if self.max_upload_mb <= 0:
            raise UsageError(f"--max-upload-mb must be positive, got {self.max_upload_mb}")
        if not 0 <= self.port <= 65535:
            raise UsageError(f"--port must be from 0 to 65535, got {self.port}")
        for flag, value in (("--max-pixels-in-flight", self.max_pixels_in_flight),
                            ("--max-queue", self.max_queue),
                            ("--decode-workers", self.decode_workers)):
            if value < 1:
                raise UsageError(f"{flag} must be at least 1, got {value}")
        if self.body_timeout_s <= 0:
            raise UsageError(f"--body-timeout must be positive, got {self.body_timeout_s}")
        if self.decoding.beam_size > MAX_BEAM_SIZE:
            raise UsageError(f"--beam {self.decoding.beam_size} is over the server's limit of "
                             f"{MAX_BEAM_SIZE}")

    @property
    def max_upload_bytes(self) -> int:
        return round(self.max_upload_mb * 2**20)
