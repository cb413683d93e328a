"""The forwarding queue: instances waiting to be sent to a remote AE, kept in LMDB.

An entry is written in the same transaction that indexes its instance, so a forward is never
lost between the two; it leaves the queue when the destination acknowledged the C-STORE.
Keys sort by the time the entry is due, so the forwarder reads the due ones first::

    outbox   b"<due, 16 hex digits of µs>\\0<SOP Instance UID>\\0<AE title>" -> JSON entry
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

DB_NAME = "outbox"


def due_key(due: float, *parts: str) -> bytes:
    """The key of a queued entry: its due time (sorting first: a cursor walk finds the due
    ones first), then ``parts`` that make it unique."""
    micros = max(0, int(due * 1e6))
    return "\0".join((f"{micros:016x}", *parts)).encode()


@dataclass(slots=True)
class Forward:
    """One instance to send to one destination."""

    sop_instance_uid: str
    destination: str
    due: float  # seconds since the epoch: not before
    attempts: int = 0
    last_error: str = ""
    queued_at: float = 0.0

    @property
    def key(self) -> bytes:
        return due_key(self.due, self.sop_instance_uid, self.destination)

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Forward:
        return cls(**json.loads(raw))


def enqueue(txn: Any, db: Any, uid: str, destinations: list[str], now: float | None = None) -> None:
    """Queue ``uid`` for each destination, due at once (inside the indexing transaction)."""
    when = time.time() if now is None else now
    for destination in destinations:
        entry = Forward(uid, destination, when, queued_at=when)
        txn.put(entry.key, entry.encode(), db=db)


def due(txn: Any, db: Any, now: float, limit: int) -> list[Forward]:
    """Entries due at ``now``, oldest first."""
    found: list[Forward] = []
    horizon = f"{int(now * 1e6):016x}\x01".encode()
    with txn.cursor(db=db) as cursor:
        for key_bytes, value in cursor:
            if bytes(key_bytes) > horizon or len(found) >= limit:
                break
            found.append(Forward.decode(bytes(value)))
    return found


def entries(txn: Any, db: Any) -> Iterator[Forward]:
    """Every entry, by due time (for ``pacs jobs``)."""
    with txn.cursor(db=db) as cursor:
        for _key, value in cursor:
            yield Forward.decode(bytes(value))


def done(txn: Any, db: Any, entry: Forward) -> None:
    """The destination has it: the entry leaves the queue."""
    txn.delete(entry.key, db=db)


def retry_later(txn: Any, db: Any, entry: Forward, error: str, now: float, base: float) -> None:
    """Count a failed attempt; due again after an exponential back-off (at most an hour)."""
    txn.delete(entry.key, db=db)
    entry.attempts += 1
    entry.last_error = error[:200]
    entry.due = now + min(base * 2 ** (entry.attempts - 1), 3600.0)
    txn.put(entry.key, entry.encode(), db=db)
