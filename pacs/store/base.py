"""The blob store interface every implementation passes (see tests/unit/test_blobstore_contract.py).

A blob is the complete Part-10 file of one instance. ``put`` is durable when it returns (the
bytes are on stable storage, fsync/fdatasync done), unless called with ``durable=False``: then the
next ``flush`` makes it (and every other put before it) durable, which is how a writer groups
many instances under one fdatasync. Locations are opaque strings chosen by the store.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

# A part of a blob to write: bytes in memory, or a spooled file copied in by the kernel.
BlobPart = bytes | bytearray | memoryview | Path


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """Where a blob went and what it holds."""

    location: str
    size: int
    digest: str  # digest of the whole blob (pacs.store.digest: x3:<XXH3-128 hex>)


class BlobStore(Protocol):
    """Put, ranged get and delete of whole instances."""

    def put(self, key: str, parts: Sequence[BlobPart], *, durable: bool = True) -> BlobInfo:
        """Write the concatenation of ``parts``; ``key`` (SOP Instance UID) names it.

        Durable on return unless ``durable=False`` (then durable after the next ``flush``).
        """
        ...

    def flush(self) -> None:
        """Make every put so far durable (one fdatasync for a whole batch where possible)."""
        ...

    def get(self, location: str, offset: int = 0, length: int | None = None) -> bytes:
        """Read ``length`` bytes (all when None) from ``offset``; BlobNotFound when absent."""
        ...

    def iter_chunks(self, location: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """Stream a blob in chunks of at most ``chunk_size`` bytes, never all in memory."""
        ...

    def size(self, location: str) -> int:
        """Size in bytes of a stored blob; BlobNotFound when absent."""
        ...

    def delete(self, location: str, uid: str = "") -> None:
        """Remove a blob; BlobNotFound when absent. ``uid`` (the instance's SOP Instance UID)
        names which entry of an in-place file goes (a file may carry two for a while)."""
        ...

    def locations(self) -> Iterator[str]:
        """Every stored blob's location (for ``pacs reindex`` and ``pacs verify``)."""
        ...

    def close(self) -> None:
        """Release files and handles."""
        ...
