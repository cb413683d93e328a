"""What an SCP handler receives and answers: one DIMSE request, its response(s)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

from pacs.dicom.identifier import decode_identifier
from pacs.errors import DicomFormatError, QueryError
from pacs.net import dimse

UNABLE_TO_PROCESS = 0xC000  # PS3.4 C.4.1.1.4: failure, unable to process

# A pending response: its command (or the command already encoded, with a data set), data set.
PendingSender = Callable[[dimse.Command | bytes, bytes | None], Awaitable[None]]
# Several pending responses sharing one encoded command (C-FIND matches), written at once.
PendingBatchSender = Callable[[bytes, Sequence[bytes]], Awaitable[None]]


class SubOperations(Protocol):
    """What a C-GET needs from its association: contexts to store on, and a way to store."""

    def accepted_syntaxes(self, abstract_syntax: str) -> list[tuple[int, str]]:
        """(presentation context ID, transfer syntax) accepted for ``abstract_syntax``."""
        ...

    async def send_sub_store(
        self, context_id: int, command: dimse.Command, chunks: AsyncIterator[bytes],
        timeout: float,
    ) -> dimse.Command:
        """Send a C-STORE-RQ with its data set; the peer's C-STORE-RSP."""
        ...

    async def send_request(
        self, context_id: int, command: dimse.Command, dataset: bytes | None, timeout: float
    ) -> dimse.Command:
        """Send any request (its data set, if any, whole) on this association; the response."""
        ...


class Request(NamedTuple):
    """One DIMSE request as it reached the SCP: command, optional dataset, and where from.

    ``cancel`` is set when a C-CANCEL-RQ names this request; ``send_pending`` writes a pending
    response (command and data set) at once, waiting while the peer is slow to read;
    ``send_pending_many`` writes several that share one encoded command. A NamedTuple, not a
    frozen dataclass: one is made per request, and a frozen dataclass's eleven
    ``object.__setattr__`` calls cost about a microsecond.
    """

    command: dimse.Command
    dataset: bytes | bytearray | Path | None
    context_id: int
    abstract_syntax: str
    transfer_syntax: str
    calling_aet: str
    peer: str
    cancel: asyncio.Event | None = None
    send_pending: PendingSender | None = None
    sub_operations: SubOperations | None = None
    send_pending_many: PendingBatchSender | None = None

    def dataset_bytes(self) -> bytes | None:
        """The request's data set in memory (a spooled one is read back; requests that carry
        identifiers or actions are small)."""
        if self.dataset is None or isinstance(self.dataset, bytes):
            return self.dataset
        if isinstance(self.dataset, bytearray):
            return bytes(self.dataset)
        return Path(self.dataset).read_bytes()


@dataclass(frozen=True, slots=True)
class Response:
    command: dimse.Command
    dataset: bytes | None = None


Handler = Callable[[Request], Awaitable[Response]]




def request_identifier(request: Request, models: dict[str, str]) -> tuple[str, dict[str, str]]:
    """(information model, identifier keyword -> text) of a C-FIND / C-GET / C-MOVE request.

    Raises QueryError 0xC000 when the context is not one of ``models`` or the identifier is
    missing or unreadable.
    """
    model = models.get(request.abstract_syntax)
    if model is None:
        raise QueryError(UNABLE_TO_PROCESS, "request on a context of another model")
    data = request.dataset_bytes()
    if data is None:
        raise QueryError(UNABLE_TO_PROCESS, "request without an identifier")
    try:
        return model, decode_identifier(data, request.transfer_syntax)
    except DicomFormatError as exc:
        raise QueryError(UNABLE_TO_PROCESS, f"cannot parse identifier: {exc}") from exc
