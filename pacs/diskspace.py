"""The free-space watermark of the data disk (``min_free_space``): stores are refused below it.

Ingest runs thousands of stores a second, so ``os.statvfs`` is not called per store: the
answer is cached for ``interval`` seconds, or until ``recheck_bytes`` have been written since
the last look (whichever comes first), so a burst of large instances is noticed early.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pacs.config import Settings

log = logging.getLogger("pacs.diskspace")

BELOW_WATERMARK = "disk below the free-space watermark"
DEFAULT_INTERVAL = 0.5  # seconds an answer is reused
DEFAULT_RECHECK_BYTES = 64 * 1024 * 1024  # written since the last look: look again


class DiskSpace:
    """Cached answer to "is the filesystem of ``path`` below ``min_free`` free bytes?"."""

    __slots__ = ("_below", "_checked_at", "_clock", "_statvfs", "_written", "interval",
                 "min_free", "path", "recheck_bytes")

    def __init__(
        self,
        path: Path,
        min_free: int,
        interval: float = DEFAULT_INTERVAL,
        recheck_bytes: int = DEFAULT_RECHECK_BYTES,
        clock: Callable[[], float] = time.monotonic,
        statvfs: Callable[[Path], os.statvfs_result] = os.statvfs,
    ) -> None:
        self.path = path
        self.min_free = min_free
        self.interval = interval
        self.recheck_bytes = recheck_bytes
        self._clock = clock
        self._statvfs = statvfs
        self._below = False
        self._checked_at: float | None = None
        self._written = 0

    def free_bytes(self) -> int:
        """Bytes available to an unprivileged writer on the filesystem, looked up now."""
        st = self._statvfs(self.path)
        return int(st.f_bavail) * int(st.f_frsize)

    def below_watermark(self) -> bool:
        """True while free space is under ``min_free`` (cached; never raises)."""
        if self.min_free <= 0:
            return False
        now = self._clock()
        if (self._checked_at is not None and now - self._checked_at < self.interval
                and self._written < self.recheck_bytes):
            return self._below
        self._checked_at, self._written = now, 0
        try:
            free = self.free_bytes()
        except OSError as exc:  # the write itself will fail and say why; do not refuse here
            log.error("cannot read the free space of %s: %s", self.path, exc)
            return self._below
        below = free < self.min_free
        if below != self._below:
            if below:
                log.warning("%s: %d bytes free on %s, under min_free_space %d; refusing stores",
                            BELOW_WATERMARK, free, self.path, self.min_free)
            else:
                log.warning("free space back above the watermark (%d bytes free on %s, "
                            "min_free_space %d); accepting stores", free, self.path,
                            self.min_free)
        self._below = below
        return below

    def note_written(self, nbytes: int) -> None:
        """Count bytes about to be written; past ``recheck_bytes`` the next check looks again."""
        self._written += nbytes


_shared: dict[tuple[str, int], DiskSpace] = {}


def watermark(settings: Settings) -> DiskSpace:
    """The process-wide checker of ``settings.data_dir`` (DIMSE and STOW-RS share its cache)."""
    key = (os.path.abspath(settings.data_dir), settings.min_free_space)
    checker = _shared.get(key)
    if checker is None:
        checker = _shared[key] = DiskSpace(Path(key[0]), settings.min_free_space)
    return checker
