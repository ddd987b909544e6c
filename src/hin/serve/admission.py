"""How many requests and how many pixels a server takes on at once.

A 200 KB PNG can hold 64 million pixels, which decode to about 0.8 GB at the peak: memory
follows the pixels being decoded, not the bytes uploaded. So a request is admitted only
while
- fewer than `max_queue` requests are in the server (its body being read, decoding, waiting
  for or in a batch): beyond it 429,
- the bytes of the request bodies held by the server, with its own, stay within `max_body`
  (a declared length is taken whole before reading; a chunked body as it arrives): beyond it
  503, and
- the pixels of the pictures being decoded, with its own, stay within `max_pixels`: beyond
  it 503. A picture larger than the whole budget can never be decoded here: 400.
Both answers carry Retry-After. The pixels are given back as soon as the picture has been
turned into the extractors' small inputs; the body bytes and the queue slot when the answer
is ready.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from hin.serve.inputs import RequestError

RETRY_AFTER_S = 1


class Admission:
    def __init__(self, max_queue: int, max_pixels: int, max_body: int) -> None:
        self.max_queue, self.max_pixels = max_queue, max_pixels
        self.max_body = max_body
        self.requests = self.pixels = self.body = 0
        self._lock = threading.Lock()

    @contextmanager
    def request(self) -> Iterator[None]:
        """A queue slot for the duration of the block, or 429."""
        with self._lock:
            if self.requests >= self.max_queue:
                raise RequestError(429, f"the server is busy ({self.requests} requests in "
                                        f"progress, the most it queues: --max-queue); retry "
                                        "shortly", retry_after=RETRY_AFTER_S)
            self.requests += 1
        try:
            yield
        finally:
            with self._lock:
                self.requests -= 1

    def reserve(self, pixels: int) -> None:
        """Take `pixels` of the decoding budget (give them back with `release`), or refuse."""
        if pixels > self.max_pixels:
            raise RequestError(400, f"the picture has {pixels:,} pixels, more than this server "
                                    f"decodes at once ({self.max_pixels:,}: "
                                    "--max-pixels-in-flight); send a smaller picture")
        with self._lock:
            if self.pixels + pixels > self.max_pixels:
                raise RequestError(503, f"the server is decoding {self.pixels:,} pixels of "
                                        f"other pictures; {pixels:,} more would pass its "
                                        f"budget of {self.max_pixels:,} "
                                        "(--max-pixels-in-flight); retry shortly",
                                   retry_after=RETRY_AFTER_S)
            self.pixels += pixels

    def release(self, pixels: int) -> None:
        with self._lock:
            self.pixels -= pixels

    def reserve_body(self, size: int) -> None:
        """Take `size` more bytes of the body budget (give them back with `release_body`),
        or refuse with 503."""
        with self._lock:
            if self.body + size > self.max_body:
                raise RequestError(503, f"the server holds {self.body / 2**20:.1f} MiB of other "
                                        f"uploads; {size / 2**20:.2f} MiB more would pass its "
                                        f"budget of {self.max_body / 2**20:.1f} MiB "
                                        "(--max-body-mb-in-flight); retry shortly",
                                   retry_after=RETRY_AFTER_S)
            self.body += size

    def release_body(self, size: int) -> None:
        with self._lock:
            self.body -= size
