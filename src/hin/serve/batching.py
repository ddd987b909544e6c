"""Dynamic batching: requests that arrive close together share one model call.

Callers `submit(key, item)` from any thread (the server's event loop) and get a future. One
worker thread takes the oldest waiting item, waits until `max_batch` items with the same key
are waiting or `max_wait_s` has passed since that item arrived, and runs
`run_batch(key, items)` on up to `max_batch` of them, in arrival order. Items are batched
only with items of an equal key (a server's key is the decoding settings: beams of different
sizes cannot share one search). Inference so runs off the event loop, one batch at a time,
and while a batch runs the next one gathers.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from hin.errors import UsageError


@dataclass
class _Waiting:
    key: Hashable
    item: Any
    arrived: float
    future: Future = field(default_factory=Future)


class BatcherClosed(RuntimeError):
    """Raised for items submitted after `close()`."""


class DynamicBatcher:
    """See the module docstring. `run_batch` returns one result per item, in order; if it
    raises, every item of that batch gets the exception."""

    def __init__(self, run_batch: Callable[[Any, list[Any]], Sequence[Any]], *,
                 max_batch: int = 8, max_wait_s: float = 0.01) -> None:
        if max_batch < 1 or max_wait_s < 0:
            raise UsageError(f"max_batch must be >= 1 and max_wait >= 0, got {max_batch} and "
                             f"{max_wait_s}")
        self.run_batch, self.max_batch, self.max_wait_s = run_batch, max_batch, max_wait_s
        self.batch_sizes: list[int] = []          # every batch run, for tests and benchmarks
        self.on_batch: Callable[[int], None] | None = None    # told each batch's size (metrics)
        self._waiting: deque[_Waiting] = deque()
        self._changed = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._work, name="hin-batcher", daemon=True)
        self._worker.start()

    def submit(self, key: Hashable, item: Any) -> Future:
        waiting = _Waiting(key, item, time.monotonic())
        with self._changed:
            if self._closed:
                raise BatcherClosed("the batcher is closed")
            self._waiting.append(waiting)
            self._changed.notify()
        return waiting.future

    def running(self) -> bool:
        """Whether batches are still run (the worker is alive and not closed)."""
        return self._worker.is_alive() and not self._closed

    def close(self) -> None:
        """Finish the waiting items, then stop the worker."""
        with self._changed:
            self._closed = True
            self._changed.notify()
        self._worker.join()

    def _next_batch(self) -> list[_Waiting]:
        with self._changed:
            while not self._waiting and not self._closed:
                self._changed.wait()
            if not self._waiting:
                return []
            first = self._waiting[0]
            deadline = first.arrived + self.max_wait_s
            while (not self._closed and self._count(first.key) < self.max_batch
                   and (left := deadline - time.monotonic()) > 0):
                self._changed.wait(left)
            batch = [w for w in self._waiting if w.key == first.key][:self.max_batch]
            taken = {id(w) for w in batch}
            self._waiting = deque(w for w in self._waiting if id(w) not in taken)
            return batch

    def _count(self, key: Hashable) -> int:
        return sum(1 for waiting in self._waiting if waiting.key == key)

    def _work(self) -> None:
        while batch := self._next_batch():
            self.batch_sizes.append(len(batch))
            if self.on_batch is not None:
                self.on_batch(len(batch))
            try:
                results = self.run_batch(batch[0].key, [waiting.item for waiting in batch])
            except Exception as error:  # every caller of this batch must hear about it
                for waiting in batch:
                    waiting.future.set_exception(error)
                continue
            for waiting, result in zip(batch, results, strict=True):
                waiting.future.set_result(result)
