"""Removing instances: unindex them first, then remove their blobs (REST DELETE, retention).

The index entry goes first, in batches through the catalog writer, and is synced to disk before
the blobs go (the server's LMDB commits are not durable by themselves: a power cut would bring
the entries back, pointing at deleted blobs), so nothing ever points at a missing blob; a crash
between the two leaves an orphan blob, which ``pacs verify`` lists.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pacs.errors import PacsError
from pacs.index.catalog import Catalog
from pacs.index.records import InstanceRecord
from pacs.store.base import BlobStore

log = logging.getLogger("pacs.delete")

T = TypeVar("T")
RunWrite = Callable[[Callable[[], T]], T]
BATCH = 256  # instances unindexed per catalog write call


def _direct(fn: Callable[[], T]) -> T:
    return fn()


def delete_instances(catalog: Catalog, store: BlobStore, uids: Sequence[str],
                     run_write: RunWrite[Any] = _direct, why: str = "") -> tuple[int, int]:
    """Unindex ``uids`` and remove their blobs: (instances deleted, bytes). ``run_write`` runs
    a catalog write (the server passes its writer thread's); blocking."""
    deleted = size = 0
    for start in range(0, len(uids), BATCH):
        batch = list(uids[start:start + BATCH])

        def unindex(batch: list[str] = batch) -> list[InstanceRecord]:
            return [r for r in map(catalog.delete_instance, batch) if r is not None]

        gone: list[InstanceRecord] = run_write(unindex)
        if gone:
            catalog.sync()  # raises: the blobs stay, the instances are unindexed (orphans)
        for record in gone:  # the index no longer points at them: now the blobs go
            try:
                store.delete(record.location, record.sop_instance_uid)
            except PacsError as exc:
                log.warning("%s: blob of %s not deleted: %s", why or "delete",
                            record.sop_instance_uid, exc)
            deleted += 1
            size += record.size
    return deleted, size
