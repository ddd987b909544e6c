"""What a server is started with (the `hin serve` flags), checked once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hin.config import DecodingConfig
from hin.errors import UsageError

MAX_BEAM_SIZE = 10       # a request may ask for beams 1..10 (cost grows with the beam)


@dataclass(frozen=True)
class ServeSettings:
    """`decoding` holds the defaults a request may change (beam size, number of captions)
    and the settings it may not (maximum length, repeats, precision)."""

    checkpoint: str | Path
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    device: str = "auto"
    max_batch: int = 8
    max_wait_ms: float = 10.0
    max_upload_mb: float = 10.0
    keep_uploads: str | Path | None = None

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise UsageError(f"--max-batch must be at least 1, got {self.max_batch}")
        if self.max_wait_ms < 0:
            raise UsageError(f"--max-wait-ms cannot be negative, got {self.max_wait_ms}")
        if self.max_upload_mb <= 0:
            raise UsageError(f"--max-upload-mb must be positive, got {self.max_upload_mb}")
        if self.decoding.beam_size > MAX_BEAM_SIZE:
            raise UsageError(f"--beam {self.decoding.beam_size} is over the server's limit of "
                             f"{MAX_BEAM_SIZE}")

    @property
    def max_upload_bytes(self) -> int:
        return round(self.max_upload_mb * 2**20)
