"""One extraction spread over machines or GPUs: `--shard K/N`, or one shard per torchrun rank.

Shard K of N takes the K-th of N contiguous, equal (to one picture) blocks of the pictures
sorted by id, so shards are deterministic, disjoint and together cover every picture. Each
shard writes its own file beside the output (`grid.h5` -> `grid.shard-1-of-4.h5`), through
the same chunk-by-chunk writer as an ordinary run (a kill loses at most one chunk; a re-run
resumes). The file records which shard it is and a fingerprint of the whole sorted id list,
so that `hin extract merge` can tell a finished set of shards from an incomplete or mixed one.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hin.errors import UsageError
from hin.extract.images import ImageFile

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    """Shard `index` (1-based) of `count`."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.index <= self.count:
            raise UsageError(f"shard {self.index}/{self.count} does not exist: shards are "
                             f"numbered 1 to {self.count} (K/N with 1 <= K <= N)")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """`"2/4"` -> Shard(2, 4)."""
        match = _SHARD.match(text)
        if match is None:
            raise UsageError(f"--shard must be K/N (shard K of N, 1 <= K <= N, e.g. 1/4), "
                             f"got {text!r}")
        return cls(int(match.group(1)), int(match.group(2)))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def take(self, files: Sequence[ImageFile]) -> list[ImageFile]:
        """This shard's block of `files` sorted by image id."""
        ordered = sorted(files, key=lambda file: file.image_id)
        return ordered[(self.index - 1) * len(ordered) // self.count:
                       self.index * len(ordered) // self.count]

    def path(self, out: str | Path) -> Path:
        """Where this shard of output `out` is written: `grid.h5` -> `grid.shard-K-of-N.h5`."""
        out = Path(out)
        return out.with_name(f"{out.stem}.shard-{self.index}-of-{self.count}{out.suffix}")


def choose_shard(text: str | None, environ: Mapping[str, str] = os.environ) -> Shard | None:
    """The shard this process extracts: `--shard K/N` when given; else, under torchrun (RANK and
    WORLD_SIZE set), shard RANK+1 of WORLD_SIZE, one per GPU; else None (every picture). A
    single shard (1/1) is no sharding: it writes the output itself."""
    if text is not None:
        shard = Shard.parse(text)
    elif "RANK" in environ and "WORLD_SIZE" in environ:
        shard = Shard(int(environ["RANK"]) + 1, int(environ["WORLD_SIZE"]))
    else:
        return None
    return shard if shard.count > 1 else None


def fingerprint(image_ids: Iterable[int]) -> str:
    """Names a list of pictures: shards cut from different lists would overlap or leave gaps."""
    ordered = sorted(image_ids)
    digest = hashlib.sha256(",".join(map(str, ordered)).encode()).hexdigest()
    return f"{len(ordered)} ids, sha256 {digest[:16]}"
