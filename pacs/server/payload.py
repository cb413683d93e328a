"""An archived instance as the bytes to send: in its stored syntax, streamed in chunks, or
converted when the peer accepts only another one (C-GET, C-MOVE, forwarding)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Executor

from pacs.dicom import part10
from pacs.dicom.convert import ConversionError, convert_dataset, plan_syntax
from pacs.index.records import InstanceRecord
from pacs.store.base import BlobStore

CHUNK = 1 << 20  # bytes read from the blob store per step: memory stays flat for any size
HEAD = 64 * 1024  # enough for the Part-10 header of any real file; more is read if needed


def _dataset_offset(store: BlobStore, location: str) -> int:
    head = store.get(location, 0, HEAD)
    try:
        _meta, offset = part10.read_file_meta(head)
    except Exception:
        _meta, offset = part10.read_file_meta(store.get(location))
    return offset


async def instance_payload(
    store: BlobStore,
    record: InstanceRecord,
    accepted: Sequence[str],
    executor: Executor,
) -> tuple[str, AsyncIterator[bytes]]:
    """(transfer syntax to send in, the data set's chunks); ConversionError when no accepted
    syntax is reachable. Reads run on ``executor``; conversion holds that one instance."""
    loop = asyncio.get_running_loop()
    syntax = plan_syntax(record.transfer_syntax_uid, accepted)
    if syntax is None:
        raise ConversionError(
            f"{record.transfer_syntax_uid} cannot be sent as any of {', '.join(accepted)}")
    offset = await loop.run_in_executor(executor, _dataset_offset, store, record.location)
    if syntax != record.transfer_syntax_uid:
        def convert() -> bytes:
            data = store.get(record.location, offset)
            return convert_dataset(data, record.transfer_syntax_uid, syntax)

        converted = await loop.run_in_executor(executor, convert)

        async def one() -> AsyncIterator[bytes]:
            yield converted

        return syntax, one()

    size = record.size or await loop.run_in_executor(executor, store.size, record.location)

    async def chunks() -> AsyncIterator[bytes]:
        position = offset
        while position < size:
            length = min(CHUNK, size - position)
            yield await loop.run_in_executor(executor, store.get, record.location, position,
                                             length)
            position += length

    return syntax, chunks()
