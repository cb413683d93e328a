"""What an SCP handler receives and answers: one DIMSE request, its response(s)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pacs.net import dimse

PendingSender = Callable[[dimse.Command, bytes | None], Awaitable[None]]


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


@dataclass(frozen=True, slots=True)
class Request:
    """One DIMSE request as it reached the SCP: command, optional dataset, and where from.

    ``cancel`` is set when a C-CANCEL-RQ names this request; ``send_pending`` writes a pending
    response (command and data set) at once, waiting while the peer is slow to read.
    """

    command: dimse.Command
    dataset: bytes | Path | None
    context_id: int
    abstract_syntax: str
    transfer_syntax: str
    calling_aet: str
    peer: str
    cancel: asyncio.Event | None = None
    send_pending: PendingSender | None = None
    sub_operations: SubOperations | None = None


@dataclass(frozen=True, slots=True)
class Response:
    command: dimse.Command
    dataset: bytes | None = None


Handler = Callable[[Request], Awaitable[Response]]


