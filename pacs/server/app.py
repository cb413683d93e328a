"""``pacs serve``: worker processes, each an event loop (uvloop when available), signals and
orderly shutdown.

With ``workers`` > 1 the parent process only supervises: every worker binds the DICOM port with
SO_REUSEPORT (the kernel spreads connections across them), opens the shared LMDB environment and
the blob store with its own writer identity, and runs its own catalog writer thread. SIGINT and
SIGTERM are forwarded; a crashed worker is restarted; a worker exits when its parent dies.

Workers are forked from the supervisor, which has no threads and no event loop and imports
little (not the archive, nor asyncio unless TLS is configured): a forked worker starts from a
small, clean interpreter, and, unlike multiprocessing's "spawn", no resource tracker process
(13 MiB) is needed for the shared association counts.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pacs.config import Settings
from pacs.errors import ConfigError, PacsError

if TYPE_CHECKING:
    import asyncio
    from multiprocessing.sharedctypes import SynchronizedArray

    from pacs.archive import Archive
    from pacs.server.balance import Balance

log = logging.getLogger("pacs.serve")

AE_COUNT_SLOTS = 4096  # hashed calling-AE slots per worker for the per-AE association caps


async def serve(
    settings: Settings,
    stop: asyncio.Event | None = None,
    worker_id: int = 0,
    parent_sentinel: int | None = None,
    association_counts: SynchronizedArray[Any] | None = None,
    ae_counts: Any = None,
    balance: Balance | None = None,
) -> None:
    """Run until SIGINT/SIGTERM (or ``stop`` is set), then finish in-flight stores and close."""
    # Imported here, not at the top: the supervisor process never needs them (its memory stays
    # small, and so does what every forked worker starts from), only the workers that serve.
    import asyncio

    from pacs.archive import Archive
    from pacs.server.dimse_server import DimseServer

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests)
            pass
    if parent_sentinel is not None:
        # The supervisor died (even by SIGKILL): finish what is in flight and leave.
        loop.add_reader(parent_sentinel, stop.set)
    archive = await loop.run_in_executor(None, Archive.open, settings, worker_id)
    dimse = DimseServer(settings, archive, reuse_port=settings.worker_count > 1,
                        association_counts=association_counts, worker_id=worker_id,
                        ae_counts=ae_counts, balance=balance)
    if settings.metrics:
        from pacs import metrics

        metrics.set_association_source(lambda: dimse.associations)
    background: list[asyncio.Task[None]] = []
    if worker_id == 0 and settings.compact_threshold > 0:
        background.append(asyncio.create_task(_compact_periodically(archive)))
    if worker_id == 0:
        from pacs.server.forward import forward_forever

        background.append(asyncio.create_task(forward_forever(archive)))
        from pacs.server.commitment import report_forever

        background.append(asyncio.create_task(report_forever(archive)))
    if worker_id == 0 and settings.retention:
        from pacs.retention import retention_forever

        background.append(asyncio.create_task(retention_forever(archive)))
    if worker_id == 0:
        from pacs.worklist.reconcile import reconcile_forever

        background.append(asyncio.create_task(reconcile_forever(archive)))
    if worker_id == 0 and settings.ris_port:
        from pacs.worklist.outbound import send_forever

        background.append(asyncio.create_task(send_forever(archive)))
    web = None
    hl7_listener = None
    try:
        from pacs.web.app import WebServer

        # Every worker serves HTTP on the shared port; the HL7 listener and the background
        # loops above stay in worker 0.
        web = WebServer(archive, settings.port, reuse_port=settings.worker_count > 1)
        await web.start()  # first: a port in use fails before any association is accepted
        if worker_id == 0 and settings.hl7_port:
            from pacs.worklist.listener import start_hl7_listener

            hl7_listener = await start_hl7_listener(archive)
        await dimse.start()
        if web is not None:
            web.context.dicom_port = dimse.port
        stats = archive.catalog.statistics()
        log.info("archive at %s holds %s instances; scanner %s", settings.data_dir,
                 stats.get("instances", 0), _scanner())
        await stop.wait()
        log.info("shutting down: finishing in-flight stores")
        if hl7_listener is not None:
            await hl7_listener.stop()
        if web is not None:
            await web.stop()
        await dimse.stop()
    finally:
        if hl7_listener is not None:
            await hl7_listener.stop()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await loop.run_in_executor(None, archive.close)
        log.info("index closed; bye")


async def _compact_periodically(archive: Archive) -> None:
    """Worker 0 rewrites sealed segments once their dead fraction reaches the threshold."""
    import asyncio

    from pacs.maintenance import compact_segments
    from pacs.store.segments import SegmentStore

    store, settings = archive.store, archive.settings
    if not isinstance(store, SegmentStore):
        return
    loop = asyncio.get_running_loop()

    def run_write(fn: Callable[[], list[str]]) -> list[str]:
        return archive.writer.run(fn).result()

    while True:
        await asyncio.sleep(settings.compact_check_interval)
        try:
            stats = await loop.run_in_executor(archive.executor, store.segment_stats)
            due = [s for s in stats if s.sealed and s.blob_bytes
                   and s.dead_bytes / s.blob_bytes >= settings.compact_threshold]
            if not due:
                continue
            log.info("compacting: %d sealed segments at least %.0f%% dead", len(due),
                     100 * settings.compact_threshold)
            report = await loop.run_in_executor(
                archive.executor, compact_segments, archive.catalog, store,
                settings.compact_threshold, run_write, settings.state_dir)
            log.info("compaction moved %d instances and reclaimed %.1f MB", report.moved,
                     report.reclaimed / 1e6)
        except Exception:  # the next round retries; nothing is lost by a failed compaction
            log.exception("compaction failed")


def _scanner() -> str:
    from pacs.dicom.scan import IMPLEMENTATION

    return IMPLEMENTATION


def _runner() -> Callable[[Coroutine[Any, Any, None]], None]:
    try:
        import uvloop
    except ImportError:  # plain asyncio still works, only slower
        import asyncio

        return asyncio.run
    return uvloop.run


def run(settings: Settings) -> int:
    """Blocking entry point for the CLI; exit status 0 after an orderly shutdown."""
    if settings.tls_port or settings.http_tls:  # else the supervisor needs no ssl nor asyncio
        from pacs.server.tls import check_tls_settings

        try:
            check_tls_settings(settings)  # here, not in each worker: one line, exit status 2
        except ConfigError as exc:
            print(f"pacs: error: {exc}", file=sys.stderr)
            return 2
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # Before any worker exists (and before prometheus_client is imported): each process of
    # this run keeps its metric values in a fresh data_dir/state/metrics (pacs.metrics).
    from pacs.metrics import prepare_multiprocess_dir

    prepare_multiprocess_dir(settings)
    _recover_other_writers(settings)
    if settings.worker_count == 1:
        return _run_worker(settings, 0, None)
    return _supervise(settings)


def _hold_writer_lock(settings: Settings, worker_id: int) -> None:
    """Lock ``state/w<N>.lock`` for this process's life (the descriptor stays open): another
    server on the same data folder, or a recovery of writers not running, then keeps its hands
    off this worker's segments (``pacs.importer.recover_stale_writers`` takes the same lock)."""
    from pacs.writers import lock_writer

    if lock_writer(settings.state_dir, f"w{worker_id}") is None:
        raise OSError(errno.EBUSY, f"writer w{worker_id} of {settings.data_dir} is in use by "
                                   "another process (another pacs serve?)")


def _recover_other_writers(settings: Settings) -> None:
    """Before any worker starts: replay the logs of writers this run will not start (workers
    of an earlier run with more of them, imports killed with the machine), so what they
    acknowledged is indexed now, not when (if ever) that writer runs again."""
    from pacs.writers import stale_writers

    ours = {f"w{i}" for i in range(settings.worker_count)}
    if settings.store_backend != "segments" or not any(
            stale_writers(settings.blob_dir, settings.state_dir, prefix, ours)
            for prefix in ("w", "import")):
        return  # the usual case: the supervisor stays lean (no asyncio, no LMDB)
    from pacs.importer import recover_stale_writers

    recovered = recover_stale_writers(settings, prefix="w", skip=ours)
    recovered += recover_stale_writers(settings)  # import writers not running now
    if recovered:
        log.info("replayed the segment logs of writers not started by this run: %s",
                 ", ".join(recovered))


def _run_worker(
    settings: Settings,
    worker_id: int,
    parent_sentinel: int | None,
    association_counts: SynchronizedArray[Any] | None = None,
    ae_counts: Any = None,
    balance: Balance | None = None,
) -> int:
    from pacs.server.malloc import tune_for_ingest

    tune_for_ingest()
    try:
        _hold_writer_lock(settings, worker_id)
    except OSError as exc:
        log.error("cannot serve: %s", exc)
        print(f"pacs: error: cannot serve: {exc}", file=sys.stderr)
        return 2
    if settings.metrics:
        from pacs.metrics import start_worker

        start_worker(association_counts)  # flushes this process's metrics once a second
    try:
        _runner()(serve(settings, worker_id=worker_id, parent_sentinel=parent_sentinel,
                        association_counts=association_counts, ae_counts=ae_counts,
                        balance=balance))
    except OSError as exc:
        log.error("cannot serve: %s", exc)
        print(f"pacs: error: cannot serve: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:  # a certificate replaced since the supervisor checked it
        log.error("cannot serve: %s", exc)
        print(f"pacs: error: {exc}", file=sys.stderr)
        return 2
    except PacsError as exc:  # the archive cannot be opened (e.g. a damaged index)
        log.error("cannot serve: %s", exc)
        print(f"pacs: error: cannot serve: {exc}", file=sys.stderr)
        return 2
    return 0


def _worker_main(
    settings: Settings, worker_id: int, lifeline: int,
    association_counts: SynchronizedArray[Any], ae_counts: Any, balance: Balance,
) -> None:
    """Body of a forked worker process; leaves by ``SystemExit`` like any ``pacs`` command.

    ``lifeline``: the read end of a pipe whose write end only the supervisor holds; it reaches
    end of file when the supervisor is gone (even by SIGKILL)."""
    from pacs.cli import configure_logging

    configure_logging(settings.log_level, f"w{worker_id}", settings.log_format)
    raise SystemExit(_run_worker(settings, worker_id, lifeline, association_counts, ae_counts,
                                 balance.for_worker(worker_id)))


@dataclass
class _Worker:
    """A forked worker, as the supervisor knows it."""

    pid: int
    lifeline: int  # the supervisor's (write) end of the worker's lifeline pipe


def _fork_worker(
    settings: Settings, worker_id: int, association_counts: SynchronizedArray[Any],
    ae_counts: Any, balance: Balance, others: list[_Worker],
) -> _Worker:
    """Fork worker ``worker_id``; in the child this never returns (``SystemExit``)."""
    child_end, parent_end = os.pipe()
    for stream in (sys.stdout, sys.stderr):  # else the child would write their buffers again
        stream.flush()
    # Signals wait until the child has its own handlers: the supervisor's handler run in a
    # worker would signal the other workers.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            # Only the supervisor may hold a worker's lifeline open: a worker holding another's
            # would keep it alive after the supervisor died.
            for fd in [parent_end, *(other.lifeline for other in others)]:
                os.close(fd)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    if pid == 0:
        _worker_main(settings, worker_id, child_end, association_counts, ae_counts, balance)
    os.close(child_end)
    return _Worker(pid, parent_end)


def _concrete_port(settings: Settings) -> Settings:
    """Port 0 means 'any free port': pick it once here so that every worker shares it (the
    DICOM port and the HTTP port)."""
    import dataclasses

    def free(host: str, taken: int) -> int:
        while True:  # the kernel may hand out the same free port twice in a row
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((host, 0))
                port = int(sock.getsockname()[1])
            if port != taken:
                return port

    if settings.port == 0:
        settings = dataclasses.replace(settings, port=free(settings.host, settings.http_port))
    if settings.http_port == 0:
        settings = dataclasses.replace(settings, http_port=free(settings.http_host,
                                                                settings.port))
    return settings


def _ports_in_use(settings: Settings) -> list[str]:
    """The listening ports another process already listens on. Workers bind with SO_REUSEPORT,
    which would let them join another server's listener (the same user's second archive) and
    take every other connection from it: a bind without it finds such a listener first."""
    busy = []
    for name, host, port in (("DICOM", settings.host, settings.port),
                             ("DICOM TLS", settings.host, settings.tls_port),
                             ("HTTP", settings.http_host, settings.http_port)):
        if not port:
            continue
        try:
            addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                           flags=socket.AI_PASSIVE)
        except socket.gaierror:
            continue  # the worker's own bind reports it
        for family, kind, proto, _name, address in addresses:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do
                try:
                    probe.bind(address)
                except OSError as exc:
                    if exc.errno == errno.EADDRINUSE:
                        busy.append(f"{name} port {port} on {address[0]}")
                        break
    return busy


def _supervise(settings: Settings) -> int:
    import multiprocessing

    from pacs.server.balance import Balance

    settings = _concrete_port(settings)
    busy = _ports_in_use(settings)
    if busy:
        for what in busy:
            log.error("%s is in use by another process", what)
        return 2
    # "fork": the shared arrays are inherited memory and an unnamed semaphore, so no resource
    # tracker process is started (as "spawn" would).
    context = multiprocessing.get_context("fork")
    count = settings.worker_count
    stopping = False
    exit_codes: dict[int, int] = {}
    # One slot per worker: a restarted worker's slot is reset, so a crash leaks no count.
    association_counts = context.Array("i", count)
    # Per calling AE, a row per worker; guarded by association_counts' lock.
    ae_counts = context.Array("i", count * AE_COUNT_SLOTS, lock=False)
    # Open DICOM connections per worker, and the sockets that hand them over: SO_REUSEPORT's
    # hash alone puts 3 of 4 associations on one worker as often as not (pacs.server.balance).
    balance = Balance.create(context, count)
    workers: dict[int, _Worker] = {}

    def start(worker_id: int) -> _Worker:
        with association_counts.get_lock():
            association_counts[worker_id] = 0
            row = worker_id * AE_COUNT_SLOTS
            ae_counts[row:row + AE_COUNT_SLOTS] = [0] * AE_COUNT_SLOTS
        balance.reset(worker_id)
        workers[worker_id] = _fork_worker(settings, worker_id, association_counts, ae_counts,
                                          balance,
                                          [w for i, w in workers.items() if i != worker_id])
        if stopping:  # the signal came while it was forked: it was not among those signalled
            on_signal(signal.SIGTERM, None)
        return workers[worker_id]

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers.values():
            try:
                os.kill(worker.pid, signal.SIGTERM)
            except ProcessLookupError:  # already reaped
                pass

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("starting %d DICOM workers on port %d%s", count, settings.port,
             f" and TLS port {settings.tls_port}" if settings.tls_port else "")
    for worker_id in range(count):
        if not stopping:
            start(worker_id)
    restarts: dict[int, float] = {}
    while workers:
        pid, status = os.waitpid(-1, 0)  # signal handlers run meanwhile (PEP 475)
        worker_id = next((i for i, w in workers.items() if w.pid == pid), -1)
        if worker_id < 0:
            continue
        os.close(workers.pop(worker_id).lifeline)
        exit_codes[worker_id] = code = os.waitstatus_to_exitcode(status)
        if stopping:
            continue
        if code == 2 and worker_id not in restarts:
            # A worker that cannot bind or open the archive: the others will fail alike.
            log.error("worker %d failed to start; stopping", worker_id)
            on_signal(signal.SIGTERM, None)
            continue
        log.error("worker %d exited with %s; restarting it", worker_id, code)
        time.sleep(max(0.0, 1.0 - (time.monotonic() - restarts.get(worker_id, 0.0))))
        if stopping:  # a signal came during the pause
            continue
        restarts[worker_id] = time.monotonic()
        start(worker_id)
    # A worker stopped by the forwarded signal before it could install its own handler (still
    # starting up) ends with -SIGTERM: that is an orderly stop too.
    clean = (0, -signal.SIGTERM, -signal.SIGINT) if stopping else (0,)
    failed = {w: c for w, c in exit_codes.items() if c not in clean}
    if failed:
        log.error("workers exited with %s", failed)
        return 2 if 2 in failed.values() else 1
    log.info("all workers stopped")
    return 0
