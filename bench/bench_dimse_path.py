"""CPU per C-STORE on the protocol side, in process: no sockets, no storage.

Two levels, both fed the PDUs dcmtk ``storescu`` sends for a 64x64 CT (a 170-byte P-DATA-TF
with the command set, then one with the ~8.7 KiB data set; both arrive in one read):

- ``assoc``: the sans-IO :class:`~pacs.net.Association` alone: receive, events, C-STORE-RSP;
- ``protocol``: :class:`~pacs.server.protocol.DicomProtocol` on the event loop (uvloop when
  available) with a transport that only collects writes, the real :class:`Services` dispatch,
  metrics and audit buffer, and an ``Ingest.store`` stub that answers one loop turn later (the
  real one waits for the writer thread's future).

Reports ``time.thread_time`` per instance (median of ``--repeat`` runs). ``--tree DIR`` imports
``pacs`` from another checkout, for A/B runs against a copy of the original files.

Usage: ``python -m bench.bench_dimse_path [-n 4000] [--repeat 7] [--tree DIR]``
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
UID_PREFIX = "1.2.826.0.1.3680043.8.498.2991305011604630427638777876766"  # 58 chars


def _dataset() -> bytes:
    """A 64x64 16-bit CT data set as storescu sends it (Explicit VR Little Endian, no meta)."""
    from tests.dicomgen import dataset_bytes, make_ct

    return dataset_bytes(make_ct(rows=64, columns=64))


def _reads(count: int, context_id: int) -> list[bytes]:
    """One read per instance: the command PDU and the data set PDU, as storescu encodes them
    (message IDs 1..count, distinct instance UIDs of one length)."""
    from pacs.net import dimse
    from pacs.net.pdu import encode_pdv_header

    data = _dataset()
    reads = []
    for i in range(count):
        command = dimse.c_store_rq(i % 0xFFFF + 1, CT, f"{UID_PREFIX}{i:06d}").encode()
        reads.append(encode_pdv_header(len(command), context_id, 0x03) + command
                     + encode_pdv_header(len(data), context_id, 0x02) + data)
    return reads


def _associate_rq() -> Any:
    from pacs.net import AssociateRQ, PresentationContextRQ, UserInformation

    contexts = (PresentationContextRQ(1, "1.2.840.10008.1.1", ("1.2.840.10008.1.2",)),
                PresentationContextRQ(3, CT, (EXPLICIT, "1.2.840.10008.1.2")))
    return AssociateRQ("PACS", "BENCH", contexts,
                       UserInformation(maximum_length=16384, implementation_class_uid="1.2.3"))


def bench_assoc(count: int) -> float:
    """Seconds of thread CPU for ``count`` C-STOREs through a bare Association."""
    from pacs.net import Association, CommandReceived, DatasetFragment, Role, dimse, negotiate

    assoc = Association(Role.ACCEPTOR, max_pdu_length=262144)
    assoc.receive_data(_associate_rq().encode())
    requested = assoc.next_event()
    supported = {"1.2.840.10008.1.1": ("1.2.840.10008.1.2",), CT: (EXPLICIT,)}
    assoc.accept(negotiate(requested.pdu, supported, max_pdu_length=262144))  # type: ignore[union-attr]
    reads = _reads(count, 3)
    out = []
    command: Any = None
    start = time.thread_time()
    for data in reads:
        buffer = assoc.get_buffer()
        buffer[: len(data)] = data
        assoc.buffer_updated(len(data))
        while (event := assoc.next_event()) is not None:
            if type(event) is CommandReceived:
                command = event.command
            elif type(event) is DatasetFragment:
                payload = bytes(event.data)
                if event.last:
                    rsp = dimse.c_store_rsp(command.message_id or 0,
                                            str(command.affected_sop_class_uid),
                                            str(command.affected_sop_instance_uid), 0)
                    out.append(assoc.send_command(event.context_id, rsp, False))
        assoc.data_to_send()
    elapsed = time.thread_time() - start
    assert len(out) == count and payload
    return elapsed


class _Transport(asyncio.Transport):
    """Collects writes; ``waiter`` is resolved at each write."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock  # a connected TCP socket: QuickAck's setsockopt is real
        self.writes = 0
        self.waiter: asyncio.Future[None] | None = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket":
            return self.sock
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: Any) -> None:
        self.writes += 1
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class _Ingest:
    """Answers one loop turn later, as the writer thread's future would."""

    async def store(self, dataset: Any, **kwargs: Any) -> Any:
        from pacs.ingest import StoredInstance

        future = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(future.set_result, None)
        await future
        return StoredInstance(kwargs["sop_instance_uid"], "", "stored", "1.2.3", "P1")


async def _bench_protocol(count: int, data_dir: Path) -> float:
    from pacs import metrics
    from pacs.audit import AuditTrail
    from pacs.config import Settings
    from pacs.diskspace import watermark
    from pacs.server.access import ContextPolicy
    from pacs.server.dimse_server import DimseServer
    from pacs.server.protocol import DicomProtocol
    from pacs.server.services import Services, supported_contexts

    settings = Settings(data_dir=data_dir)
    server = DimseServer.__new__(DimseServer)
    server.settings = settings
    server._counts = None
    server._ae_counts = None
    server._ae_local = {}
    server._local_associations = 0
    server.connections = set()
    server.pending_stores = 0
    server._paused = set()
    server._idle = asyncio.Event()
    server._balance = None  # one worker: no connection hand-over
    server._stopping = False
    server.disk = watermark(settings)
    server.context_policy = ContextPolicy(supported_contexts())
    # No index here: nothing deferred to write when the association ends.
    no_index = type("Writer", (), {"write_deferred": lambda self: None})()
    server.archive = type("Archive", (), {  # type: ignore[assignment]
        "spool_dir": data_dir, "writer": no_index})()
    services = Services.__new__(Services)
    services.ingest = _Ingest()  # type: ignore[assignment]
    services.handlers = {1: services.c_store}
    services.audit_buffer = metrics.AuditBuffer(AuditTrail(data_dir / "audit"))
    server.services = services

    protocol = DicomProtocol(server)
    with socket.create_server(("127.0.0.1", 0)) as listener, \
            socket.create_connection(listener.getsockname()):
        accepted, _ = listener.accept()
        with accepted:
            return await _drive(protocol, _Transport(accepted), count, services)


async def _drive(protocol: Any, transport: _Transport, count: int, services: Any) -> float:
    loop = asyncio.get_running_loop()
    protocol.connection_made(transport)

    def feed(data: bytes) -> None:
        buffer = protocol.get_buffer(-1)
        buffer[: len(data)] = data
        protocol.buffer_updated(len(data))

    transport.waiter = loop.create_future()
    feed(_associate_rq().encode())
    await transport.waiter
    reads = _reads(count, 3)
    start = time.thread_time()
    for data in reads:
        transport.waiter = waiter = loop.create_future()
        feed(data)
        await waiter
    elapsed = time.thread_time() - start
    assert transport.writes == count + 1, transport.writes
    protocol.connection_lost(None)
    services.audit_buffer.flush_all()
    return elapsed


def bench_protocol(count: int) -> float:
    """Seconds of thread CPU for ``count`` C-STOREs through DicomProtocol and Services."""
    try:
        import uvloop

        run: Any = uvloop.run
    except ImportError:  # pragma: no cover
        run = asyncio.run
    with tempfile.TemporaryDirectory() as tmp:
        return float(run(_bench_protocol(count, Path(tmp))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=4000, help="instances per run")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--tree", type=Path, help="import pacs from this directory")
    parser.add_argument("--level", choices=("assoc", "protocol", "both"), default="both")
    args = parser.parse_args()
    if args.tree is not None:
        sys.path.insert(0, str(args.tree.resolve()))
    import pacs

    print(f"pacs from {Path(pacs.__file__).parent}")
    levels = ("assoc", "protocol") if args.level == "both" else (args.level,)
    for level in levels:
        bench = bench_assoc if level == "assoc" else bench_protocol
        bench(min(args.n, 500))  # warm-up: imports, caches
        runs = [bench(args.n) / args.n * 1e6 for _ in range(args.repeat)]
        print(f"{level:9s} median {statistics.median(runs):6.1f} us/instance  "
              f"(min {min(runs):.1f}, max {max(runs):.1f}, {args.repeat} runs of {args.n})")


if __name__ == "__main__":
    main()
