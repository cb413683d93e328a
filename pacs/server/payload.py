"""An archived instance as the bytes to send: in its stored syntax, streamed in chunks, or
converted when the peer accepts only another one (C-GET, C-MOVE, forwarding).

:class:`ReadAhead` reads the first chunk of the next instances of a retrieve (the whole blob
when it is small) in one executor call per batch, while the current ones are on the wire: a
sub-operation then costs no thread round trip of its own.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Generic, TypeVar

from pacs.dicom import part10
from pacs.dicom.convert import ConversionError, convert_dataset, plan_syntax
from pacs.errors import PacsError, StorageError
from pacs.index.records import InstanceRecord
from pacs.store.base import BlobStore

CHUNK = 1 << 20  # bytes read from the blob store per step: memory stays flat for any size
READ_AHEAD_BYTES = 1 << 20  # a batch of read-ahead stops once it holds this much
READ_AHEAD_ITEMS = 16  # and never takes more instances than this

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Head:
    """The first chunk of a stored blob (all of it when ``size <= len(data)``)."""

    data: bytes
    size: int  # of the whole blob
    offset: int  # where the data set starts, after the Part-10 header
    syntax: str | None  # the file meta's TransferSyntaxUID

    @property
    def whole(self) -> bool:
        return self.size <= len(self.data)


def read_head(store: BlobStore, location: str) -> Head:
    """One blob's first :data:`CHUNK` bytes and where its data set starts (one read for a
    blob smaller than that)."""
    data = store.get(location, 0, CHUNK)
    size = len(data) if len(data) < CHUNK else store.size(location)
    try:
        meta, offset = part10.read_file_meta(data)
    except Exception:
        if len(data) >= size:
            raise
        meta, offset = part10.read_file_meta(store.get(location))  # header past CHUNK
    return Head(data, size, offset, meta.get("TransferSyntaxUID"))


def _read_heads(store: BlobStore, locations: Sequence[str]) -> list[Head | Exception]:
    """Heads of ``locations`` in order, stopping after :data:`READ_AHEAD_BYTES` (at least
    one); a blob that cannot be read gives its exception in its place."""
    heads: list[Head | Exception] = []
    total = 0
    for location in locations:
        try:
            head = read_head(store, location)
        except (PacsError, OSError, ValueError) as exc:
            heads.append(exc)
            continue
        heads.append(head)
        total += len(head.data)
        if total >= READ_AHEAD_BYTES:
            break
    return heads


class ReadAhead(Generic[T]):
    """Items from ``queue`` with their :class:`Head`, read a batch ahead on ``executor``.

    Several consumers may share one queue (the associations of a C-MOVE): each takes at most
    its share (``len(queue) // sharers``) per batch. Items taken but not handed out go back
    to the front of the queue with :meth:`give_back` when the consumer stops early.
    """

    def __init__(self, store: BlobStore, queue: deque[T], location: Callable[[T], str],
                 executor: Executor | None = None, sharers: int = 1) -> None:
        self._store = store
        self._queue = queue
        self._location = location
        self._executor = executor
        self._sharers = max(1, sharers)
        self._ready: deque[tuple[T, Head | Exception]] = deque()
        self._reading: asyncio.Future[list[Head | Exception]] | None = None
        self._taken: list[T] = []

    def _start(self) -> None:
        queue = self._queue
        if not queue:
            return
        count = max(1, min(READ_AHEAD_ITEMS, len(queue) // self._sharers))
        self._taken = [queue.popleft() for _ in range(min(count, len(queue)))]
        loop = asyncio.get_running_loop()
        self._reading = loop.run_in_executor(self._executor, _read_heads, self._store,
                                             [self._location(item) for item in self._taken])

    async def next(self) -> tuple[T, Head | Exception] | None:
        """The next item and its head (or why it could not be read); None when done."""
        if not self._ready:
            if self._reading is None:
                self._start()
                if self._reading is None:
                    return None
            assert self._reading is not None
            heads = await self._reading
            taken, self._reading, self._taken = self._taken, None, []
            self._ready.extend(zip(taken, heads, strict=False))
            for item in reversed(taken[len(heads):]):  # past the byte budget: not read yet
                self._queue.appendleft(item)
        entry = self._ready.popleft()
        if not self._ready:
            self._start()  # read the next batch while this item is sent
        return entry

    def give_back(self) -> None:
        """Put every item taken and not handed out back at the front of the queue."""
        unsent = [item for item, _ in self._ready] + self._taken
        self._ready.clear()
        self._taken = []
        if self._reading is not None:
            self._reading.cancel()
            self._reading = None
        for item in reversed(unsent):
            self._queue.appendleft(item)


async def instance_payload(
    store: BlobStore,
    record: InstanceRecord,
    accepted: Sequence[str],
    executor: Executor,
    head: Head | None = None,
) -> tuple[str, AsyncIterator[bytes | memoryview]]:
    """(transfer syntax to send in, the data set's chunks); ConversionError when no accepted
    syntax is reachable. Reads run on ``executor``; conversion holds that one instance.
    ``head``: the blob's :class:`Head` when it was read ahead already."""
    loop = asyncio.get_running_loop()
    syntax = plan_syntax(record.transfer_syntax_uid, accepted)
    if syntax is None:
        raise ConversionError(
            f"{record.transfer_syntax_uid} cannot be sent as any of {', '.join(accepted)}")
    if head is None:
        head = await loop.run_in_executor(executor, read_head, store, record.location)
    known = head
    if syntax != record.transfer_syntax_uid:
        def convert() -> bytes:
            data = known.data if known.whole else store.get(record.location)
            return convert_dataset(memoryview(data)[known.offset:], record.transfer_syntax_uid,
                                   syntax)

        converted = await loop.run_in_executor(executor, convert)

        async def one() -> AsyncIterator[bytes | memoryview]:
            yield converted

        return syntax, one()

    async def chunks() -> AsyncIterator[bytes | memoryview]:
        yield memoryview(known.data)[known.offset:]
        position = len(known.data)
        while position < known.size:
            length = min(CHUNK, known.size - position)
            chunk = await loop.run_in_executor(executor, store.get, record.location, position,
                                               length)
            if len(chunk) != length:  # a blob shorter than indexed: never send it cut short
                raise StorageError(f"blob {record.location} ends at {position + len(chunk)} "
                                   f"bytes, indexed as {known.size}")
            yield chunk
            position += length

    return syntax, chunks()
