"""What an SCP handler receives and answers: one DIMSE request, its response(s)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from pacs.net import dimse

PendingSender = Callable[[dimse.Command, bytes | None], Awaitable[None]]


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


@dataclass(frozen=True, slots=True)
class Response:
    command: dimse.Command
    dataset: bytes | None = None


Handler = Callable[[Request], Awaitable[Response]]


