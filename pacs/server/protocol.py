"""The DIMSE transport: an asyncio BufferedProtocol around one sans-IO ``Association``.

Bytes from the socket go straight into the association's receive buffer (no copy), events come
out and are acted upon; what the association wants written is written. Timers (ARTIM and the
idle timeout) live here because clocks are I/O.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

from pacs.diskspace import BELOW_WATERMARK
from pacs.net import (
    Aborted,
    AssociateRequested,
    Association,
    CommandReceived,
    ConnectionClosed,
    DatasetFragment,
    Event,
    ReleaseConfirmed,
    ReleaseRequested,
    Role,
    dimse,
)
from pacs.net.fsm import State
from pacs.server.access import (
    association_cap,
    check_association,
    limit_exceeded,
    permissions_of,
)
from pacs.server.messages import Request, Response
from pacs.server.spool import Spool
from pacs.server.tcp import QuickAck

if TYPE_CHECKING:
    from pacs.server.dimse_server import DimseServer

log = logging.getLogger("pacs.dimse")


# Statuses of requests refused before their data set is taken in (PS3.7 C.4.2, PS3.4 B.2.3).
OUT_OF_RESOURCES, NOT_AUTHORIZED = 0xA700, 0x0124
# A-ABORT source 2 service-provider, reason 0 not specified (PS3.8 9.3.8).
ABORT_SOURCE_PROVIDER = 2
_CANCELLABLE = frozenset({dimse.C_FIND_RQ, dimse.C_GET_RQ, dimse.C_MOVE_RQ})  # PS3.7 9.3.2.3


class DicomProtocol(asyncio.BufferedProtocol):
    """One TCP connection, acceptor side."""

    def __init__(self, server: DimseServer, placeable: bool = True) -> None:
        """``placeable``: the server may hand the new connection to a less busy worker
        (``pacs.server.balance``): not for TLS, nor for one handed over already."""
        self.server = server
        self.placeable = placeable
        self.counted = False  # in the workers' connection counts (pacs.server.balance)
        self._handed_over = False
        self.settings = server.settings
        self.association = Association(Role.ACCEPTOR, max_pdu_length=self.settings.max_pdu_size)
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.calling_aet = ""
        self._loop = asyncio.get_running_loop()
        self._artim: asyncio.TimerHandle | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._last_progress = self._loop.time()
        self._spool: Spool | None = None
        self._store_command: CommandReceived | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._release_requested = False
        self._stored = False  # a C-STORE data set was taken in (its index may be deferred)
        self._accepted = False
        self._closed = False
        self._paused = False
        self._timer_state: State | None = None
        self._can_write = asyncio.Event()  # cleared while the transport's buffer is full
        self._can_write.set()
        self._cancels: dict[int, asyncio.Event] = {}  # message ID -> its C-CANCEL flag
        self._tcp: QuickAck | None = None
        self._soon: list[bytes | memoryview] = []  # see _write_soon
        self._soon_scheduled = False
        self._discarding = False  # dropping the data set of a response to us
        # A request refused at command receipt or while its data set grew past
        # max_dataset_size: (command, status, comment); its fragments are dropped unread.
        self._refused: tuple[CommandReceived, int, str] | None = None
        self._max_dataset = self.settings.max_dataset_size
        self._may_store = True  # the calling AE's 'store' permission
        # Sub-operations we send as acceptor (C-GET's C-STORE-RQ): message ID -> its response.
        self._next_message_id = 0
        self._awaiting: dict[int, asyncio.Future[dimse.Command]] = {}
        # Set while a message of ours goes out in parts with awaits between them (a C-GET's
        # C-STORE-RQ): other messages wait for it, so that none lands inside its data set.
        self._partial: asyncio.Event | None = None

    # --- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.placeable and self.server.hand_over(self, transport):
            self._handed_over = True  # another worker serves it: nothing read, nothing sent
            return
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self._tcp = QuickAck(transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.server.connection_opened(self)
        self._flush()
        self._update_timers()
        self._idle = self._loop.call_later(self.settings.idle_timeout, self._check_idle)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.association.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        association = self.association
        association.buffer_updated(nbytes)
        self._drain_events()
        # A quick ACK matters while the peer is still sending (a peer using Nagle holds its
        # next small segment until our ACK). Once a message is complete the peer waits for our
        # response, which carries the ACK: no setsockopt then (most small C-STOREs).
        if (self._tcp is not None and association.mid_message and not self._closed
                and not association.should_close):
            self._tcp.after_read()

    def eof_received(self) -> bool:
        self.association.receive_data(b"")
        self._drain_events()
        return False

    def _fail_awaiting(self, why: str = "association ended") -> None:
        for future in self._awaiting.values():
            if not future.done():
                future.set_exception(ConnectionError(why))
        self._awaiting.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._handed_over:
            return
        self._fail_awaiting()
        # Requests still running (a C-MOVE's sub-operations, a C-FIND's matches) serve nobody
        # now: they take their C-CANCEL path and stop.
        for flag in self._cancels.values():
            flag.set()
        # Whoever waits for the peer to read again (a paused C-GET, pending C-FIND responses)
        # wakes up and finds the association gone, instead of waiting forever.
        self._can_write.set()
        if not self.association.is_closed:
            self.association.receive_data(b"")
            self._closed = True  # nothing more may be written; still drain for the log
            self._drain_events()
        self._closed = True
        for handle in (self._artim, self._idle):
            if handle is not None:
                handle.cancel()
        if self._spool is not None:
            log.warning("%s %s: connection lost during a C-STORE; dropped the partial data set",
                        self.peer, self.calling_aet)
            self._spool.discard()
            self._spool = None
        self._write_deferred()  # an association that ended without a release too
        self.server.connection_closed(self)

    def _write_deferred(self) -> None:
        if self._stored:
            self._stored = False
            self.server.archive.writer.write_deferred()

    def pause_writing(self) -> None:
        self._can_write.clear()
        self._last_progress = self._loop.time()  # a stalled peer's time counts from here

    def resume_writing(self) -> None:
        self._can_write.set()
        self._last_progress = self._loop.time()  # the peer reads

    def pause_reading(self) -> None:
        # Never while the peer owes us a response (a C-GET's C-STORE-RSP): it could not be
        # read until the request that waits for it ends.
        if (self.transport is not None and not self._paused and not self._closed
                and not self._awaiting):
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and self._paused and not self._closed:
            self._paused = False
            self.transport.resume_reading()

    # --- events ------------------------------------------------------------------------------

    def _drain_events(self) -> None:
        next_event = self.association.next_event
        event = next_event()
        if event is not None:
            self._last_progress = self._loop.time()  # once per read, not per event
            while event is not None:
                self._on_event(event)
                event = next_event()
        self._flush()
        self._update_timers()

    def _flush(self) -> None:
        data = self.association.data_to_send()
        if data or self._soon:
            self._write(data)
        if self.association.should_close and self.transport is not None and not self._closed:
            self.transport.close()

    def _on_event(self, event: Event) -> None:
        if isinstance(event, DatasetFragment):  # the hot path first
            if self._discarding:  # a response's optional data set (e.g. an Event Reply)
                self._discarding = not event.last
                return
            spool = self._spool
            if spool is None:
                if self._refused is not None:  # not buffered: only the end is awaited
                    if event.last:
                        self._send_refusal()
                    return
                self._protocol_abort("data set fragment without a pending C-STORE-RQ")
                return
            if spool.size + len(event.data) > self._max_dataset:
                self._refuse_growing(spool)
                if event.last:
                    self._send_refusal()
                return
            spool.write(event.data, event.last)  # copies: the view dies at the next call
            if event.last:
                self._dataset_complete()
        elif isinstance(event, CommandReceived):
            self._on_command(event)
        elif isinstance(event, AssociateRequested):
            self._on_associate(event)
        elif isinstance(event, ReleaseRequested | ReleaseConfirmed):
            # A requester that asked to release sends no more P-DATA (Sta7): responses to our
            # requests (C-GET's C-STORE sub-operations, an N-EVENT-REPORT) will not come.
            self._fail_awaiting("the peer asked to release")
            self._release_requested = True
            self._maybe_release()
        elif isinstance(event, Aborted):
            level = logging.WARNING if event.local else logging.INFO
            log.log(level, "%s %s: association aborted (source %d, reason %d)%s", self.peer,
                    self.calling_aet, event.source, event.reason,
                    f": {event.error}" if event.error else "")
            self._drop_spool()
            self._end_association()
        elif isinstance(event, ConnectionClosed):
            self._drop_spool()
            self._end_association()

    def _on_associate(self, event: AssociateRequested) -> None:
        rq = event.pdu
        self.calling_aet = rq.calling_ae_title.strip()
        called_aet = rq.called_ae_title.strip()
        peername = self.transport.get_extra_info("peername") if self.transport else None
        peer_host = str(peername[0]) if peername else ""
        rejection = check_association(self.settings, self.calling_aet, called_aet, peer_host)
        if rejection is None:
            why = self.server.admit_association(
                self.calling_aet, association_cap(self.settings, self.calling_aet))
            rejection = limit_exceeded(why) if why is not None else None
        if rejection is not None:
            log.warning("%s %s -> %s: rejected, %s (A-ASSOCIATE-RJ result %d, source %d, "
                        "reason %d)", self.peer, self.calling_aet, called_aet, rejection.why,
                        rejection.result, rejection.source, rejection.reason)
            self._write(self.association.reject(rejection.result, rejection.source,
                                                rejection.reason))
            return
        permissions = permissions_of(self.settings, self.calling_aet)
        self._may_store = "store" in permissions
        # Contexts the calling AE may not use are answered with result 1 (user rejection).
        # The SCP role is granted where a C-GET peer asks for it (and may get): its storage
        # contexts then carry our C-STORE sub-operations back to it.
        ac = self.server.context_policy.negotiate(rq, permissions, self.settings.max_pdu_size)
        self._write(self.association.accept(ac))
        self._accepted = True
        accepted = sum(1 for pc in ac.presentation_contexts if pc.result == 0)
        log.info("%s %s -> %s: association accepted (%d of %d presentation contexts)",
                 self.peer, self.calling_aet, called_aet, accepted,
                 len(rq.presentation_contexts))

    def _on_command(self, event: CommandReceived) -> None:
        if self._spool is not None or self._refused is not None:
            self._protocol_abort("new command before the previous data set was complete")
            return
        field = event.command.get(dimse.COMMAND_FIELD)
        if isinstance(field, int) and field & 0x8000:
            self._on_response(event)
            return
        if event.has_dataset:
            if field == dimse.C_STORE_RQ:
                refusal = self._store_refusal()
                if refusal is not None:  # before anything is received or spooled
                    self._refused = (event, *refusal)
                    return
            self._store_command = event
            self._stored = self._stored or field == dimse.C_STORE_RQ
            self._spool = Spool(self.settings.spool_memory_limit, self.server.archive.spool_dir)
            return
        self._dispatch(event, None)

    def _store_refusal(self) -> tuple[int, str] | None:
        """(status, comment) when a C-STORE-RQ is refused at once, else None."""
        if not self._may_store:
            return NOT_AUTHORIZED, f"calling AE {self.calling_aet} may not store"
        if self.server.disk.below_watermark():
            return OUT_OF_RESOURCES, BELOW_WATERMARK
        return None

    def _refuse_growing(self, spool: Spool) -> None:
        """The data set passed max_dataset_size: drop what was spooled, refuse the request."""
        assert self._store_command is not None
        self._refused = (self._store_command, OUT_OF_RESOURCES,
                         f"data set larger than max_dataset_size ({self._max_dataset} bytes)")
        spool.discard()
        self._spool, self._store_command = None, None

    def _send_refusal(self) -> None:
        """Answer the refused request (its data set is complete, discarded) with its failure
        status; the association goes on."""
        assert self._refused is not None
        event, status, comment = self._refused
        self._refused = None
        command = event.command
        field = command.get(dimse.COMMAND_FIELD)
        log.warning("%s %s: %s %s refused: 0x%04X %s", self.peer, self.calling_aet,
                    "C-STORE" if field == dimse.C_STORE_RQ else f"command {field!r}",
                    command.get(dimse.AFFECTED_SOP_INSTANCE_UID) or "", status, comment)
        response = dimse.failure_rsp(command, status, comment)
        if self._partial is not None:  # after the message half sent (this runs in a callback)
            task = self._loop.create_task(self._write_refusal_later(event.context_id, response))
            self._tasks.add(task)
            task.add_done_callback(self._task_done)
            return
        self._write_refusal(event.context_id, response)

    async def _write_refusal_later(self, context_id: int, response: dimse.Command) -> None:
        await self._whole_messages()
        self._write_refusal(context_id, response)

    def _write_refusal(self, context_id: int, response: dimse.Command) -> None:
        if not self._closed and self.association.may_send_p_data:
            self._write(self.association.send_command(context_id, response, False))
            self._last_progress = self._loop.time()

    def _on_response(self, event: CommandReceived) -> None:
        """A response to a request we sent (C-STORE-RSP during a C-GET, N-EVENT-REPORT-RSP)."""
        # Its data set, if any (N-EVENT-REPORT-RSP may carry an Event Reply), is not needed.
        self._discarding = event.has_dataset
        answered = event.command.message_id_being_responded_to
        future = self._awaiting.pop(answered, None) if answered is not None else None
        if future is None:
            log.warning("%s %s: response to unknown message %s ignored", self.peer,
                        self.calling_aet, answered)
        elif not future.done():
            future.set_result(event.command)

    def accepted_syntaxes(self, abstract_syntax: str) -> list[tuple[int, str]]:
        """(context ID, transfer syntax) of the accepted contexts for ``abstract_syntax``."""
        return [(context_id, transfer) for context_id, (abstract, transfer)
                in self.association.accepted_contexts.items() if abstract == abstract_syntax]

    async def send_sub_store(
        self,
        context_id: int,
        command: dimse.Command,
        chunks: AsyncIterator[bytes],
        timeout: float,
    ) -> dimse.Command:
        """Send a C-STORE-RQ sub-operation on this association and wait for its response.

        ``command``'s MessageID is set here. The data set goes out chunk by chunk as P-DATA,
        pausing while the peer does not read; the response must come within ``timeout``.
        """
        await self._whole_messages()
        message_id, future = self._expect_response(command)
        partial = self._partial = asyncio.Event()
        try:
            # The command goes out with the first data (one write per small instance).
            head: bytes | None = self.association.send_command(context_id, command, True)
            pending: bytes | memoryview | None = None
            async for chunk in chunks:
                if pending is not None:
                    self._write_dataset(context_id, pending, last=False, head=head)
                    head = None
                    await self._can_write.wait()
                pending = chunk
            self._write_dataset(context_id, pending or b"", last=True, head=head)
            self._end_partial(partial)
            await self._can_write.wait()
            return await asyncio.wait_for(future, timeout)
        except Exception as exc:
            if (self.association.sending_dataset and not self._closed
                    and self.association.may_send_p_data):
                # The data set could not be read to its end: no other message may follow the
                # part that went out, so the association cannot go on.
                self._protocol_abort(f"C-STORE sub-operation cut short ({exc})")
                raise ConnectionError("association aborted: a sub-operation's data set could "
                                      "not be sent whole") from exc
            raise
        finally:
            if (self._partial is partial and self.association.sending_dataset
                    and not self._closed and self.association.may_send_p_data):
                # Cancelled half sent (nothing cancels it today): nothing may follow the part
                # that went out.
                self._protocol_abort("C-STORE sub-operation stopped half sent")
            self._end_partial(partial)
            self._awaiting.pop(message_id, None)
            _retrieve(future)

    def _end_partial(self, partial: asyncio.Event) -> None:
        if self._partial is partial:
            self._partial = None
        partial.set()

    async def _whole_messages(self) -> None:
        """Wait until no message of ours is half sent (see ``_partial``)."""
        while self._partial is not None:
            await self._partial.wait()

    async def send_request(
        self, context_id: int, command: dimse.Command, dataset: bytes | None, timeout: float
    ) -> dimse.Command:
        """Send a request (e.g. N-EVENT-REPORT-RQ) with its optional data set on this
        association and wait at most ``timeout`` for its response; MessageID is set here."""
        await self._whole_messages()
        message_id, future = self._expect_response(command)
        try:
            self._write(self.association.send_command(context_id, command, dataset is not None))
            if dataset is not None:
                self._write_dataset(context_id, dataset, last=True)
            self._last_progress = self._loop.time()
            await self._can_write.wait()
            return await asyncio.wait_for(future, timeout)
        finally:
            self._awaiting.pop(message_id, None)
            _retrieve(future)

    def _expect_response(
        self, command: dimse.Command
    ) -> tuple[int, asyncio.Future[dimse.Command]]:
        """Give ``command`` a fresh MessageID; the future its response will complete."""
        if self._closed or not self.association.is_established:
            raise ConnectionError("association ended")
        self._next_message_id = self._next_message_id % 0xFFFF + 1
        message_id = self._next_message_id
        command[dimse.MESSAGE_ID] = message_id
        future: asyncio.Future[dimse.Command] = self._loop.create_future()
        self._awaiting[message_id] = future
        self.resume_reading()  # the response must be read (back-pressure paused us maybe)
        return message_id, future

    def _write_dataset(self, context_id: int, data: bytes | memoryview, last: bool,
                       head: bytes | None = None) -> None:
        """Write (part of) a data set; ``head`` (its command's PDU) goes first, in the same
        write. A message begun before the peer asked to release is finished (Sta8)."""
        if self._closed or not self.association.may_send_p_data:
            raise ConnectionError("association ended")
        parts = self.association.send_dataset_parts(context_id, data, last=last)
        if head is not None:
            parts = [head, *parts]
        if self._soon:
            self._flush_soon()
        if self.transport is not None:
            self.transport.writelines(parts)  # one call for the chunk's PDUs, no join

    def _dataset_complete(self) -> None:
        assert self._spool is not None and self._store_command is not None
        spool, command = self._spool, self._store_command
        self._spool, self._store_command = None, None
        if command.command.get(dimse.COMMAND_FIELD) == dimse.C_STORE_RQ:
            disk = self.server.disk
            disk.note_written(spool.size)
            if disk.below_watermark():  # crossed while this data set came in: write nothing
                spool.discard()
                self._refused = (command, OUT_OF_RESOURCES, BELOW_WATERMARK)
                self._send_refusal()
                return
        self._dispatch(command, spool)

    def _dispatch(self, event: CommandReceived, spool: Spool | None) -> None:
        abstract_syntax, transfer_syntax = self.association.accepted_contexts[event.context_id]
        command = event.command
        field = command.get(dimse.COMMAND_FIELD)
        if field == dimse.C_CANCEL_RQ:
            if spool is not None:  # a C-CANCEL-RQ has no data set (PS3.7 9.3.2.3): dropped
                spool.discard()
            target = command.message_id_being_responded_to
            flag = self._cancels.get(target) if target is not None else None
            log.info("%s %s: C-CANCEL-RQ for message %s%s", self.peer, self.calling_aet,
                     target, "" if flag is not None else " (nothing running)")
            if flag is not None:
                flag.set()
            return
        try:
            dataset = spool.finish() if spool is not None else None
        except OSError as exc:
            log.error("%s %s: cannot spool the data set: %s", self.peer, self.calling_aet, exc)
            dataset = None
        cancel: asyncio.Event | None = None
        message_id = command.message_id
        if message_id is not None and field in _CANCELLABLE:
            # Only C-FIND, C-GET and C-MOVE can be cancelled: no flag on the C-STORE path.
            cancel = self._cancels[message_id] = asyncio.Event()
        request = Request(command, dataset, event.context_id, abstract_syntax, transfer_syntax,
                          self.calling_aet, self.peer, cancel,
                          lambda rsp, data: self._send_pending(event.context_id, rsp, data),
                          self, lambda rsp, datasets: self._send_pending_many(
                              event.context_id, rsp, datasets))
        self.server.store_started(self)
        task = self._loop.create_task(self._serve(request, spool))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    async def _send_pending(
        self, context_id: int, command: dimse.Command | bytes, dataset: bytes | None
    ) -> None:
        """Write one pending response now; wait while the peer does not read. ``command`` may
        come encoded (C-FIND encodes its pending command once per query)."""
        if self._partial is not None:
            await self._whole_messages()
        if self._closed or not self.association.may_send_p_data:
            raise ConnectionError("association ended")
        if isinstance(command, bytes):
            assert dataset is not None
            self._write_soon(self.association.send_message(context_id, command, dataset))
        else:
            self._write_soon(self.association.send_command(context_id, command,
                                                           dataset is not None))
            if dataset is not None:
                self._write_soon(self.association.send_dataset(context_id, dataset))
        self._last_progress = self._loop.time()
        await self._can_write.wait()

    async def _send_pending_many(
        self, context_id: int, command: bytes, datasets: Sequence[bytes]
    ) -> None:
        """Write pending responses sharing one encoded command in one write; wait while the
        peer does not read."""
        if self._partial is not None:
            await self._whole_messages()
        if self._closed or not self.association.may_send_p_data:
            raise ConnectionError("association ended")
        self._write_soon(self.association.send_messages(context_id, command, datasets))
        self._last_progress = self._loop.time()
        await self._can_write.wait()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s %s: request failed", self.peer, self.calling_aet,
                      exc_info=task.exception())
        # An A-RELEASE-RQ that arrived while this response was in flight is answered now.
        self._maybe_release()

    async def _serve(self, request: Request, spool: Spool | None) -> None:
        try:
            response: Response = await self.server.services.handle(request)
        except ConnectionError:
            return  # the peer went away while we were sending pending responses
        finally:
            if spool is not None:
                spool.discard()
            if request.cancel is not None and request.command.message_id is not None:
                self._cancels.pop(request.command.message_id, None)
            self.server.store_finished()
        if self._partial is not None:
            await self._whole_messages()
        if self._closed or not self.association.may_send_p_data:
            log.info("%s %s: association gone before the response to message %s", self.peer,
                     self.calling_aet, request.command.message_id)
        else:
            dataset = response.dataset  # e.g. a C-GET's Failed SOP Instance UID List
            out = self.association.send_command(request.context_id, response.command,
                                                dataset is not None)
            if dataset is not None:
                out += self.association.send_dataset(request.context_id, dataset, last=True)
            self._write(out)
            self._last_progress = self._loop.time()

    def _maybe_release(self) -> None:
        """Answer A-RELEASE-RQ once every response of this association is out."""
        if (self._release_requested and not self._tasks and not self._closed
                and self.association.release_response_due):
            self._release_requested = False
            # Its stores' deferred upper levels are written before the A-RELEASE-RP: once the
            # client has it, any reader (a read-only one too) finds them complete.
            self._write_deferred()
            # The slot is freed before the A-RELEASE-RP goes out: a client that opens its next
            # association on receiving it (maybe in another worker) must find the slot free.
            self._end_association()
            self._write(self.association.release_response())
            self._flush()
            self._update_timers()

    def _protocol_abort(self, why: str) -> None:
        log.warning("%s %s: %s; aborting", self.peer, self.calling_aet, why)
        self._drop_spool()
        self._write(self.association.abort(ABORT_SOURCE_PROVIDER, 0))
        if self.transport is not None:
            self.transport.close()

    def _drop_spool(self) -> None:
        if self._spool is not None:
            log.warning("%s %s: incomplete data set dropped (%d bytes)", self.peer,
                        self.calling_aet, self._spool.size)
            self._spool.discard()
            self._spool = None
            self._store_command = None

    def _end_association(self) -> None:
        if self._accepted:
            self._accepted = False
            self.server.remove_association(self.calling_aet)

    def _write(self, data: bytes | memoryview) -> None:
        if self._soon:
            self._flush_soon()  # what was queued goes first: responses stay in order
        if data and self.transport is not None and not self._closed:
            self.transport.write(data)

    def _write_soon(self, data: bytes | memoryview) -> None:
        """Queue bytes for one ``writelines`` at the end of this loop iteration.

        C-FIND sends a pending response per row: one send() per row cost more than the rows.
        """
        self._soon.append(data)
        if not self._soon_scheduled:
            self._soon_scheduled = True
            self._loop.call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        self._soon_scheduled = False
        if self._soon and self.transport is not None and not self._closed:
            self.transport.writelines(self._soon)
        self._soon = []

    def shutdown(self) -> None:
        """Server stopping: in-flight stores have answered; drop the connection."""
        if self.transport is not None and not self._closed:
            if self.association.may_send_p_data:  # Sta6 or Sta8: an A-ABORT is due
                self._write(self.association.abort(ABORT_SOURCE_PROVIDER, 0))
            self.transport.close()

    def _update_timers(self) -> None:
        state = self.association.state
        if state is State.Sta6 and self._timer_state is State.Sta6:
            return  # the data transfer state: no ARTIM, and the last call stopped it
        running = self.association.artim_running
        if state is not self._timer_state and self._artim is not None and running:
            # AA-1 and AR-4 (re)start ARTIM on entering Sta13: a fresh full interval.
            self._artim.cancel()
            self._artim = None
        self._timer_state = state
        if running and self._artim is None:
            self._artim = self._loop.call_later(self.settings.acse_timeout, self._artim_expired)
        elif not running and self._artim is not None:
            self._artim.cancel()
            self._artim = None

    def _artim_expired(self) -> None:
        self._artim = None
        log.info("%s %s: ARTIM timer expired", self.peer, self.calling_aet)
        if self.association.artim_running:
            self.association.timer_expired()
            self._drain_events()
        if self.transport is not None and not self._closed:
            self.transport.close()

    def _check_idle(self) -> None:
        if self._closed:
            return
        idle_for = self._loop.time() - self._last_progress
        # A request in progress keeps an association open while it works, not while its peer
        # reads nothing of what it sends (a C-GET or C-FIND would wait for it forever).
        stalled = not self._can_write.is_set()
        if idle_for >= self.settings.idle_timeout and (stalled or not self._tasks):
            if stalled:
                log.warning("%s %s: the peer read nothing for %.1f s, aborting", self.peer,
                            self.calling_aet, idle_for)
            else:
                log.info("%s %s: idle for %.1f s, aborting", self.peer, self.calling_aet,
                         idle_for)
            if self.association.may_send_p_data:
                self._write(self.association.abort(ABORT_SOURCE_PROVIDER, 0))
            if self.transport is not None:
                self.transport.abort()
            return
        wait = max(self.settings.idle_timeout - idle_for, 0.05)
        self._idle = self._loop.call_later(wait, self._check_idle)


def _retrieve(future: asyncio.Future[dimse.Command]) -> None:
    """Mark a failed response future's exception as seen: what failed the request (the
    release, the connection's end) is reported by whoever raised instead."""
    if future.done() and not future.cancelled():
        future.exception()
