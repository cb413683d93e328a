"""Storage SCU: C-STORE to a remote AE as association-requestor (PS3.4 Annex B, PS3.7 9.1.1,
PS3.8 Section 9), on the same sans-IO :class:`~pacs.net.Association` as the SCP.

:class:`StoreSCU` is one association: ``connect`` (A-ASSOCIATE), ``echo``, ``store`` (a data
set streamed as P-DATA fragments while its chunks come, never copied whole), ``release``,
``abort``. :func:`send_instances` sends stored instances (C-MOVE sub-operations, forwarding)
over one or more parallel associations, converting the transfer syntax where the peer does
not accept the stored one (:mod:`pacs.dicom.convert`); each failure is counted and reported,
the rest go on. Every wait is bounded: a peer that refuses, drops or stalls costs at most the
timeout, never a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import sys
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Self

from pacs.dicom.convert import ConversionError, convert_dataset, plan_syntax
from pacs.dicom.uids import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN
from pacs.errors import DicomFormatError, PacsError, ProtocolError, StorageError
from pacs.net import (
    Aborted,
    AssociateAccepted,
    AssociateRejected,
    Association,
    CommandReceived,
    ConnectionClosed,
    DatasetFragment,
    Event,
    ReleaseConfirmed,
    ReleaseRequested,
    Role,
    RoleSelection,
    c_echo_rq,
    c_store_rq,
    propose,
)
from pacs.net.association import TRANSPORT_CLOSED
from pacs.net.dimse import ERROR_COMMENT, is_warning
from pacs.server.payload import Head, ReadAhead
from pacs.server.tcp import QuickAck
from pacs.store.base import BlobStore

if TYPE_CHECKING:
    import ssl

    from pacs.config import RemoteAE, Settings

log = logging.getLogger("pacs.scu")


CHUNK_SIZE = 1 << 20
MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: odd context IDs 1..255
# Statuses we report for sub-operations that failed on our side (PS3.4 C.4.2.1.5 leaves the
# sub-operation status to the SCP): the peer refused every context for the SOP class, or we
# could not read / convert / send the instance.
STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122
STATUS_UNABLE_TO_PROCESS = 0xC000
STATUS_CONNECTION_FAILED = 0xA702  # "out of resources: unable to perform sub-operations"

Buffer = bytes | bytearray | memoryview
Chunks = AsyncIterable[Buffer] | Iterable[Buffer] | Buffer


class SCUError(PacsError, ConnectionError):
    """The remote AE could not be reached, refused us, or the association broke."""


class AssociationRejected(SCUError):
    """A-ASSOCIATE-RJ: ``result``, ``source`` and ``reason`` as in PS3.8 9.3.4."""

    def __init__(self, result: int, source: int, reason: int) -> None:
        self.result, self.source, self.reason = result, source, reason
        kind = "permanently" if result == 1 else "transiently"
        super().__init__(f"association rejected {kind} (source {source}, reason {reason})")


def remote_tls(settings: Settings, remote: RemoteAE) -> ssl.SSLContext | None:
    """The TLS context of associations to ``remote``: None unless it is marked ``tls``.
    (``ssl`` is imported only then: the supervisor process stays without it.)"""
    if not remote.tls:
        return None
    from pacs.server.tls import client_context

    return client_context(settings)


def _is_tls_error(exc: BaseException) -> bool:
    ssl = sys.modules.get("ssl")  # loaded whenever a TLS association was tried
    return ssl is not None and isinstance(exc, ssl.SSLError)


def _tls_reason(exc: BaseException) -> str:
    from pacs.server.tls import tls_reason

    return tls_reason(exc)


class _Protocol(asyncio.BufferedProtocol):
    """The transport side of one requestor association: bytes in, events queued."""

    def __init__(self, association: Association) -> None:
        self.association = association
        self.transport: asyncio.Transport | None = None
        self.events: deque[Event] = deque()
        self.lost = False
        self._waiter: asyncio.Future[None] | None = None
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._tcp: QuickAck | None = None
        self.tls_error = ""  # why a TLS connection ended, when TLS ended it

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self._tcp = QuickAck(transport)
        # Up to a few chunks queued in the kernel-side buffer, then wait for the peer.
        transport.set_write_buffer_limits(high=4 * CHUNK_SIZE, low=CHUNK_SIZE)  # type: ignore[attr-defined]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.association.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        if self._tcp is not None:
            self._tcp.after_read()
        self.association.buffer_updated(nbytes)
        self._drain()

    def eof_received(self) -> bool:
        self.association.receive_data(b"")
        self._drain()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if exc is not None and _is_tls_error(exc):
            self.tls_error = _tls_reason(exc)
        if not self.association.is_closed:
            self.association.receive_data(b"")
            self._drain()
        self._can_write.set()  # writers wake up and find the connection gone
        self._wake()

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    def _drain(self) -> None:
        association = self.association
        while (event := association.next_event()) is not None:
            if isinstance(event, DatasetFragment):
                continue  # no data set is due to a Storage SCU; the view dies here
            self.events.append(event)
        out = association.data_to_send()
        if out and self.transport is not None and not self.lost:
            self.transport.write(out)
        if association.should_close and self.transport is not None:
            self.transport.close()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next_event(self, timeout: float) -> Event:
        """The next event, waiting at most ``timeout`` seconds (then TimeoutError)."""
        if self.events:
            return self.events.popleft()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.events:
            if self.lost:
                return ConnectionClosed()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError
            # A bare future and a timer: asyncio.wait_for costs two futures and callbacks
            # more, once per sub-operation.
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(remaining, _expire, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        return self.events.popleft()

    async def writable(self, timeout: float) -> None:
        """Wait until the transport's buffer drained below its low mark."""
        if not self._can_write.is_set():
            await asyncio.wait_for(self._can_write.wait(), timeout)
        if self.lost:
            raise SCUError("connection lost")


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class StoreSCU:
    """One association to a remote AE, as requestor."""

    def __init__(self, protocol: _Protocol, peer: str) -> None:
        self._protocol = protocol
        self._association = protocol.association
        self.peer = peer
        self._message_ids = itertools.count(1)
        self._broken: str | None = None
        self.contexts: dict[tuple[str, str], int] = {}
        self.accepted: dict[str, list[str]] = {}
        for context_id, (abstract, transfer) in sorted(
            self._association.accepted_contexts.items()
        ):
            self.contexts.setdefault((abstract, transfer), context_id)
            self.accepted.setdefault(abstract, []).append(transfer)

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        calling_aet: str,
        called_aet: str,
        contexts: Sequence[tuple[str, Sequence[str]]],
        timeout: float = 10,
        max_pdu: int = 256 * 1024,
        roles: Sequence[RoleSelection] = (),
        tls: ssl.SSLContext | None = None,
    ) -> Self:
        """Open the connection (over TLS with ``tls``) and negotiate; raises
        :class:`SCUError` (refused, timeout, TLS handshake failed, aborted) or
        :class:`AssociationRejected`. ``roles`` asks for SCP/SCU roles."""
        loop = asyncio.get_running_loop()
        association = Association(Role.REQUESTOR, max_pdu_length=max_pdu)
        peer = f"{called_aet}@{host}:{port}"
        try:
            if tls is None:
                connecting = loop.create_connection(lambda: _Protocol(association), host, port)
            else:
                connecting = loop.create_connection(
                    lambda: _Protocol(association), host, port, ssl=tls, server_hostname=host,
                    ssl_handshake_timeout=timeout)  # fmt: skip
            _, protocol = await asyncio.wait_for(connecting, timeout)
        except TimeoutError:
            raise SCUError(f"{peer}: no connection within {timeout:g} s") from None
        except OSError as exc:
            if _is_tls_error(exc):
                raise SCUError(f"{peer}: TLS handshake failed: {_tls_reason(exc)}") from exc
            raise SCUError(f"{peer}: cannot connect: {exc.strerror or exc}") from exc
        assert protocol.transport is not None
        rq = propose(called_aet, calling_aet, contexts, roles=roles, max_pdu_length=max_pdu)
        protocol.transport.write(association.send_associate_rq(rq))
        try:
            event = await protocol.next_event(timeout)
        except TimeoutError:
            protocol.transport.abort()
            raise SCUError(f"{peer}: no A-ASSOCIATE response within {timeout:g} s") from None
        except BaseException:  # cancelled: a C-MOVE no longer needs this association
            protocol.transport.abort()
            raise
        if isinstance(event, AssociateAccepted):
            scu = cls(protocol, peer)
            if not scu.contexts:
                scu.abort()
                raise SCUError(f"{peer}: association accepted without any presentation context")
            return scu
        protocol.transport.close()
        if isinstance(event, AssociateRejected):
            pdu = event.pdu
            raise AssociationRejected(pdu.result, pdu.source, pdu.reason)
        if isinstance(event, Aborted):
            # TLS 1.3: the peer checks our certificate after our side of the handshake, so a
            # refusal shows only now, as a closed connection (uvloop drops the alert itself).
            if protocol.tls_error:
                raise SCUError(f"{peer}: TLS: {protocol.tls_error}")
            if tls is not None and event.error == TRANSPORT_CLOSED:
                raise SCUError(f"{peer}: TLS connection closed before the association was "
                               "accepted (our client certificate refused? see tls_cert)")
            raise SCUError(f"{peer}: association aborted (source {event.source}, "
                           f"reason {event.reason}){': ' + event.error if event.error else ''}")
        raise SCUError(f"{peer}: connection closed during association negotiation")

    @property
    def is_usable(self) -> bool:
        return self._broken is None and self._association.is_established

    # -- DIMSE ---------------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        transport = self._protocol.transport
        if self._protocol.lost or transport is None or transport.is_closing():
            raise SCUError(f"{self.peer}: connection lost")
        transport.write(data)

    def _check(self) -> None:
        if self._broken is not None:
            raise SCUError(f"{self.peer}: association unusable: {self._broken}")
        if not self._association.is_established:
            raise SCUError(f"{self.peer}: association not established")

    def _fail(self, why: str) -> SCUError:
        """The association cannot go on: abort it and say why."""
        self._broken = why
        self.abort()
        return SCUError(f"{self.peer}: {why}")

    async def _response(self, message_id: int, timeout: float) -> CommandReceived:
        while True:
            try:
                event = await self._protocol.next_event(timeout)
            except TimeoutError:
                raise self._fail(f"no response to message {message_id} within {timeout:g} s"
                                 ) from None
            if isinstance(event, CommandReceived):
                if event.command.message_id_being_responded_to == message_id:
                    return event
                log.warning("%s: response to unknown message %s ignored", self.peer,
                            event.command.message_id_being_responded_to)
                continue
            if isinstance(event, ReleaseRequested):
                raise self._fail("the peer asked to release the association mid-operation")
            if isinstance(event, Aborted):
                raise self._fail(f"association aborted (source {event.source}, reason "
                                 f"{event.reason}){': ' + event.error if event.error else ''}")
            raise self._fail("connection closed by the peer")

    async def echo(self, timeout: float = 30) -> int:
        """C-ECHO (the Verification context must have been proposed): the status."""
        self._check()
        context_id = next((cid for (abstract, _), cid in self.contexts.items()
                           if abstract == "1.2.840.10008.1.1"), None)  # fmt: skip
        if context_id is None:
            raise SCUError(f"{self.peer}: Verification was not accepted")
        message_id = next(self._message_ids) & 0xFFFF
        self._write(self._association.send_command(context_id, c_echo_rq(message_id), False))
        event = await self._response(message_id, timeout)
        return event.command.status if event.command.status is not None else 0xC000

    async def store(
        self,
        sop_class_uid: str,
        sop_instance_uid: str,
        chunks: Chunks,
        transfer_syntax: str,
        *,
        move_originator_aet: str | None = None,
        move_originator_message_id: int | None = None,
        timeout: float = 30,
    ) -> tuple[int, str | None]:
        """C-STORE one data set given as chunks in ``transfer_syntax``: (status, comment).

        The chunks are sent as P-DATA-TF fragments as they come (no copy of the whole data
        set), each wait bounded by ``timeout``. An association-level failure (peer gone,
        stalled, aborted) raises :class:`SCUError` and leaves this SCU unusable; an error of
        the chunk source propagates after aborting the association (the data set cannot be
        completed on the wire).
        """
        self._check()
        context_id = self.contexts.get((sop_class_uid, transfer_syntax))
        if context_id is None:
            raise SCUError(f"{self.peer}: no accepted context for {sop_class_uid} in "
                           f"{transfer_syntax}")
        message_id = next(self._message_ids) & 0xFFFF
        rq = c_store_rq(message_id, sop_class_uid, sop_instance_uid,
                        move_originator_ae_title=move_originator_aet,
                        move_originator_message_id=move_originator_message_id)
        try:
            rq_pdu: bytes | None = self._association.send_command(context_id, rq, True)
        except ProtocolError as exc:  # the state machine left Sta6 (the peer aborted)
            raise self._fail(f"cannot send: {exc}") from None
        # The command goes out with the first data PDUs, in one write: one syscall and one
        # wake-up of the peer fewer per instance.
        previous: Buffer | None = None
        try:
            if isinstance(chunks, bytes | bytearray | memoryview):
                await self._send_part(context_id, chunks, True, timeout, rq_pdu)
            else:
                async for chunk in _aiter_chunks(chunks):
                    if not chunk:
                        continue
                    if previous is not None:
                        await self._send_part(context_id, previous, False, timeout, rq_pdu)
                        rq_pdu = None
                    previous = chunk
                await self._send_part(context_id, previous or b"", True, timeout, rq_pdu)
        except (SCUError, ProtocolError):
            raise
        except TimeoutError:
            raise self._fail(f"peer stalled: nothing written for {timeout:g} s") from None
        except BaseException:
            self._broken = "data set source failed"
            self.abort()
            raise
        event = await self._response(message_id, timeout)
        command = event.command
        status = command.status if command.status is not None else 0xC000
        comment = command.get(ERROR_COMMENT)
        return status, comment if isinstance(comment, str) else None

    async def _send_part(
        self, context_id: int, data: bytes | bytearray | memoryview, last: bool, timeout: float,
        command: bytes | None = None,
    ) -> None:
        """P-DATA-TF PDUs of ``data`` (after ``command``'s PDU when given), in one write."""
        transport = self._protocol.transport
        if self._protocol.lost or transport is None or transport.is_closing():
            raise self._fail("connection lost while sending a data set")
        try:
            parts = self._association.send_dataset_parts(context_id, data, last)
        except ProtocolError as exc:  # the state machine left Sta6 (peer aborted)
            raise self._fail(f"cannot send: {exc}") from None
        if command is not None:
            parts = [command, *parts]
        transport.writelines(parts)
        await self._protocol.writable(timeout)

    # -- ending --------------------------------------------------------------------------------

    async def release(self, timeout: float = 10) -> None:
        """A-RELEASE; aborts instead when the peer does not confirm within ``timeout``."""
        if not self.is_usable:
            self.abort()
            return
        try:
            self._write(self._association.release_request())
            while True:
                event = await self._protocol.next_event(timeout)
                if isinstance(event, ReleaseConfirmed | ConnectionClosed | Aborted):
                    break
        except (TimeoutError, SCUError, ProtocolError):
            self.abort()
            return
        transport = self._protocol.transport
        if transport is not None:
            transport.close()

    def abort(self) -> None:
        """A-ABORT (when the connection still takes it) and close, without waiting."""
        transport = self._protocol.transport
        if transport is None or transport.is_closing():
            return
        if not self._association.is_closed and transport.get_write_buffer_size() == 0:
            with contextlib.suppress(ProtocolError):
                transport.write(self._association.abort())
            transport.close()
        else:
            transport.abort()  # the peer is not reading: drop what is queued


async def _aiter_chunks(chunks: Chunks) -> AsyncIterator[Buffer]:
    if isinstance(chunks, bytes | bytearray | memoryview):
        yield chunks
    elif isinstance(chunks, AsyncIterable):
        async for chunk in chunks:
            yield chunk
    else:
        for chunk in chunks:
            yield chunk


# --- sending stored instances ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Destination:
    host: str
    port: int
    aet: str
    tls: ssl.SSLContext | None = field(default=None, compare=False)


@dataclass
class SendCounts:
    """Outcome of :func:`send_instances`, as C-MOVE reports its sub-operations."""

    completed: int = 0
    warning: int = 0
    failed: int = 0
    failed_uids: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.completed + self.warning + self.failed


@dataclass(frozen=True, slots=True)
class _Item:
    location: str
    sop_class_uid: str
    sop_instance_uid: str
    stored_ts: str


ResultCallback = Callable[[str, int, str | None], None]


def _contexts_for(classes: dict[str, set[str]]) -> list[tuple[str, list[str]]]:
    """One single-syntax context per (SOP class, syntax): the stored syntaxes of the class
    plus the two native fallbacks, so the peer's choice never forces a needless conversion."""
    contexts: list[tuple[str, list[str]]] = []
    for sop_class, stored in classes.items():
        syntaxes = sorted(stored)
        for fallback in (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN):
            if fallback not in stored:
                syntaxes.append(fallback)
        contexts.extend((sop_class, [ts]) for ts in syntaxes)
    return contexts


def _batches(items: Sequence[_Item]) -> list[tuple[list[tuple[str, list[str]]], list[_Item]]]:
    """Split the items so that each batch proposes at most 128 presentation contexts."""
    by_class: dict[str, set[str]] = {}
    for item in items:
        by_class.setdefault(item.sop_class_uid, set()).add(item.stored_ts)
    batches: list[dict[str, set[str]]] = [{}]
    used = 0
    for sop_class, stored in by_class.items():
        need = len(stored | {EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN})
        if need > MAX_CONTEXTS:  # absurd: more than 126 stored syntaxes of one class
            need = MAX_CONTEXTS
            stored = set(sorted(stored)[: MAX_CONTEXTS - 2])
        if used + need > MAX_CONTEXTS:
            batches.append({})
            used = 0
        batches[-1][sop_class] = stored
        used += need
    out = []
    for group in batches:
        members = [item for item in items if item.sop_class_uid in group]
        if members:
            out.append((_contexts_for(group)[:MAX_CONTEXTS], members))
    return out


async def _blob_chunks(store: BlobStore, location: str, head: Head) -> AsyncIterator[Buffer]:
    """The data set of a blob in chunks of at most 1 MiB, read in a thread as it is sent."""
    yield memoryview(head.data)[head.offset:]
    position = len(head.data)
    while position < head.size:
        length = min(CHUNK_SIZE, head.size - position)
        chunk = await asyncio.to_thread(store.get, location, position, length)
        if len(chunk) != length:
            raise StorageError(f"short read of {location} at {position}")
        yield chunk
        position += length


def _load_and_convert(store: BlobStore, location: str, head: Head, from_ts: str,
                      to_ts: str) -> bytes:
    data = head.data if head.whole else store.get(location)
    return convert_dataset(memoryview(data)[head.offset:], from_ts, to_ts)


class _Run:
    """Shared state of one send_instances call: the queue, the counts, the callback."""

    def __init__(
        self, store: BlobStore, counts: SendCounts, on_result: ResultCallback | None,
        timeout: float, move_originator_aet: str | None,
        move_originator_message_id: int | None,
    ) -> None:
        self.store = store
        self.counts = counts
        self.on_result = on_result
        self.timeout = timeout
        self.move_originator_aet = move_originator_aet
        self.move_originator_message_id = move_originator_message_id

    def result(self, item: _Item, status: int, comment: str | None) -> None:
        counts = self.counts
        if status == 0:
            counts.completed += 1
        elif is_warning(status):
            counts.warning += 1
        else:
            counts.failed += 1
            counts.failed_uids.append(item.sop_instance_uid)
            log.info("C-STORE of %s failed: 0x%04X %s", item.sop_instance_uid, status,
                     comment or "")
        if self.on_result is not None:
            try:
                self.on_result(item.sop_instance_uid, status, comment)
            except Exception:
                log.exception("result callback failed")

    async def send_one(self, scu: StoreSCU, item: _Item, head: Head | Exception) -> None:
        """Send one item whose head was read; SCUError when the association broke (the item
        is counted)."""
        if isinstance(head, Exception):
            self.result(item, STATUS_UNABLE_TO_PROCESS, f"cannot read the instance: {head}")
            return
        accepted = scu.accepted.get(item.sop_class_uid, [])
        stored_ts = head.syntax or item.stored_ts
        if not accepted:
            self.result(item, STATUS_SOP_CLASS_NOT_SUPPORTED,
                        f"{scu.peer} accepted no context for SOP class {item.sop_class_uid}")
            return
        target = plan_syntax(stored_ts, accepted)
        if target is None:
            self.result(item, STATUS_UNABLE_TO_PROCESS,
                        f"cannot convert {stored_ts} to any syntax {scu.peer} accepted")
            return
        chunks: Chunks
        if target != stored_ts:
            try:
                chunks = await asyncio.to_thread(
                    _load_and_convert, self.store, item.location, head, stored_ts, target
                )
            except (ConversionError, DicomFormatError, PacsError, OSError) as exc:
                self.result(item, STATUS_UNABLE_TO_PROCESS, f"conversion failed: {exc}")
                return
        elif head.whole:  # the usual case: one buffer, sent with its command in one write
            chunks = memoryview(head.data)[head.offset:]
        else:
            chunks = _blob_chunks(self.store, item.location, head)
        try:
            status, comment = await scu.store(
                item.sop_class_uid, item.sop_instance_uid, chunks, target,
                move_originator_aet=self.move_originator_aet,
                move_originator_message_id=self.move_originator_message_id,
                timeout=self.timeout,
            )
        except SCUError as exc:
            self.result(item, STATUS_CONNECTION_FAILED, str(exc)[:64])
            raise
        except (PacsError, OSError) as exc:  # reading the blob failed mid-stream
            self.result(item, STATUS_UNABLE_TO_PROCESS, f"cannot read the instance: {exc}")
            raise SCUError(f"{scu.peer}: association aborted after a read error") from exc
        self.result(item, status, comment)


# Destinations that left a second A-ASSOCIATE-RQ unanswered while the first association sent
# everything (dcmtk's storescp without --fork, many modalities): (host, port, AE title) ->
# until when (loop time) sends to them use one association. A second association would only
# queue behind the first and cost a negotiation of its own. Parallel SCPs answer in 1-4 ms;
# a wrong guess costs parallelism for SERIAL_MEMORY, then the next send tries again.
_SERIAL: dict[Destination, float] = {}
SERIAL_EVIDENCE = 0.010  # s the second A-ASSOCIATE-RQ waited, unanswered, for nothing
SERIAL_MEMORY = 60.0  # s


def _serial(dest: Destination) -> bool:
    until = _SERIAL.get(dest)
    if until is None:
        return False
    if until < asyncio.get_running_loop().time():
        del _SERIAL[dest]
        return False
    return True


async def _connect_while_needed(
    dest: Destination, calling_aet: str, contexts: list[tuple[str, list[str]]],
    connect_timeout: float, max_pdu: int, drained: asyncio.Event,
) -> StoreSCU | str | None:
    """An extra association, given up (None) when another one has sent every item before it
    was accepted. A reason string when it cannot be had."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    connecting = asyncio.ensure_future(StoreSCU.connect(
        dest.host, dest.port, calling_aet=calling_aet, called_aet=dest.aet, contexts=contexts,
        timeout=connect_timeout, max_pdu=max_pdu, tls=dest.tls))  # fmt: skip
    if not drained.is_set():
        waiting = asyncio.ensure_future(drained.wait())
        try:
            await asyncio.wait({connecting, waiting}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
    if not connecting.done():
        connecting.cancel()
        await asyncio.gather(connecting, return_exceptions=True)
        if loop.time() - started >= SERIAL_EVIDENCE:
            log.info("%s@%s:%d accepts one association at a time: later moves use one",
                     dest.aet, dest.host, dest.port)
            _SERIAL[dest] = loop.time() + SERIAL_MEMORY
        return None
    try:
        return connecting.result()
    except SCUError as exc:
        return str(exc)


async def _worker(
    run: _Run, queue: deque[_Item], dest: Destination, calling_aet: str,
    contexts: list[tuple[str, list[str]]], connect_timeout: float, max_pdu: int,
    sharers: int, drained: asyncio.Event, first: bool,
) -> str | None:
    """Send items from the shared queue over one association; the reason it stopped early.
    Only the ``first`` association is always opened; the others while there is work left."""
    if first:
        try:
            scu = await StoreSCU.connect(dest.host, dest.port, calling_aet=calling_aet,
                                         called_aet=dest.aet, contexts=contexts,
                                         timeout=connect_timeout, max_pdu=max_pdu,
                                         tls=dest.tls)  # fmt: skip
        except SCUError as exc:
            return str(exc)
    else:
        extra = await _connect_while_needed(dest, calling_aet, contexts, connect_timeout,
                                            max_pdu, drained)
        if not isinstance(extra, StoreSCU):
            return extra
        scu = extra
    # Heads of the next instances are read in one thread call per batch, while the current
    # batch is sent.
    ahead = ReadAhead(run.store, queue, _location, sharers=sharers)
    stopped: str | None = None
    try:
        while (entry := await ahead.next()) is not None:
            item, head = entry
            try:
                await run.send_one(scu, item, head)
            except SCUError as exc:
                stopped = str(exc)  # another association (maybe still connecting) sends the rest
                break
        else:
            drained.set()  # every item is sent: associations still connecting are not needed
        ahead.give_back()
        await scu.release(timeout=connect_timeout)
    except BaseException:
        # Cancelled (a C-CANCEL, a shutdown) maybe with a C-STORE outstanding: a graceful
        # release would first wait for its response, up to connect_timeout.
        ahead.give_back()
        scu.abort()
        raise
    return stopped


def _location(item: _Item) -> str:
    return item.location


async def send_instances(
    store: BlobStore,
    items: Sequence[tuple[str, str, str, str]],
    dest: tuple[str, int, str],
    calling_aet: str,
    *,
    associations: int = 1,
    on_result: ResultCallback | None = None,
    timeout: float = 30,
    connect_timeout: float = 10,
    max_pdu: int = 256 * 1024,
    move_originator_aet: str | None = None,
    move_originator_message_id: int | None = None,
    tls: ssl.SSLContext | None = None,
) -> SendCounts:
    """C-STORE ``items`` — ``(location, SOP class UID, SOP instance UID, stored transfer
    syntax)`` — from ``store`` to ``dest`` = ``(host, port, AE title)``, over TLS with ``tls``.

    Up to ``associations`` parallel associations take items from one queue; instances go in
    their stored syntax when accepted, else converted (in memory) to Explicit or Implicit VR
    LE. Each outcome goes to ``on_result(sop_instance_uid, status, error_comment)`` and into
    the returned counts. A broken association fails its item in flight; the others take over
    the queue, and when none is left the remaining items fail. Every wait is bounded by
    ``timeout`` (``connect_timeout`` to connect, associate and release). An extra
    association not yet accepted when every item is under way is given up, and a
    destination seen to accept one association at a time gets one for a while.
    """
    destination = Destination(*dest, tls=tls)
    counts = SendCounts()
    run = _Run(store, counts, on_result, timeout, move_originator_aet,
               move_originator_message_id)  # fmt: skip
    wanted = [_Item(*entry) for entry in items]
    if associations > 1 and _serial(destination):
        associations = 1
    for contexts, batch in _batches(wanted):
        queue = deque(batch)
        workers = max(1, min(associations, len(batch)))
        drained = asyncio.Event()
        reasons = await asyncio.gather(*(
            _worker(run, queue, destination, calling_aet, contexts, connect_timeout, max_pdu,
                    workers, drained, index == 0)
            for index in range(workers)
        ))  # fmt: skip
        why = next((r for r in reasons if r), "no association")
        if queue:  # every association ended early; the statuses' comments hold 64 characters
            log.warning("%d instances not sent to %s@%s:%d: %s", len(queue), destination.aet,
                        destination.host, destination.port, why)
        while queue:
            run.result(queue.popleft(), STATUS_CONNECTION_FAILED, why[:64])
    return counts
