"""``pacs migrate --from AET@host:port``: pull a whole remote archive into ours.

Off the hot path, so pynetdicom is the SCU. The archive must be running (``pacs serve``): the
source sends the instances to it as C-MOVE sub-operations, and we ask it (C-FIND) what it holds.

1. **Inventory.** C-FIND, Study Root, STUDY level, against the source, sliced by StudyDate so a
   huge archive never answers one giant result: one query per year (``--since-year`` to next
   year, plus open-ended ranges before and after); a slice answering more than
   ``--slice-limit`` studies is split into months, then days. Each study comes with
   NumberOfStudyRelatedInstances. Studies without a StudyDate match no range: ``--undated``
   adds one unsliced query keeping only those.
2. **Our side.** C-FIND against our archive, StudyInstanceUID lists in batches: a study whose
   instance count here already reaches the source's is skipped (resumable, even after kill -9),
   once its instances are the source's: a study this tool did not move (sent here directly,
   e.g. after go-live) is compared SOP Instance UID by UID (SERIES, then IMAGE-level C-FINDs on
   both sides), since instances of its own could make up the count with one of the source's
   missing. Done studies are also kept in ``data_dir/state/migrate-<AET>.json``.
3. **Transfer.** C-MOVE per study (destination: our AE title) over ``--parallel`` associations
   (one thread each). The source must know our AE title as a move destination (host and port);
   for Orthanc that is a ``DicomModalities`` entry, which must also allow our calling AE title
   (``--calling-aet``, default our AE title) to query and move.
   With ``--get``, C-GET instead (the source needs not know us as a move destination, only
   allow our calling AE title to get): this process is the C-GET SCU and its C-STORE
   sub-operations are ingested right here through the archive's write path (``Ingest.store``:
   scan, segment blob, batched catalog commits), with its own segment writer (``importN``, as
   ``pacs import``), beside the running archive on the same data directory. A sub-operation is
   answered success only once its instance is durable and indexed. The running archive is
   still needed for the C-FIND counts. With ``--tls`` the associations to the source use DICOM
   TLS, with the context of TLS remote AEs (``tls_ca`` checks the source's certificate and
   host, ``tls_cert`` is presented).
4. **Reconciliation.** Counts queried again on both sides; the report (a table per study, then
   the missing ones) goes to ``migrate-report-<AET>-<timestamp>.txt`` (or ``--report``), the
   totals to stdout. Exit 0 when every study of the source is complete here, 1 otherwise, 2 on
   bad usage, when a peer cannot be reached, or when the C-GET writer's catalog checkpoint
   failed.
"""

from __future__ import annotations

import calendar
import datetime
import json
import logging
import os
import queue
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, build_role, evt
from pynetdicom.association import Association

from pacs.config import Settings
from pacs.errors import ConfigError

if TYPE_CHECKING:
    import ssl

    from pacs.archive import Archive

log = logging.getLogger("pacs.migrate")

VERIFICATION = "1.2.840.10008.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
# Offered for every storage SOP class of a C-GET: no deflate or big endian (rare, and the
# sources transcode when asked for something we propose).
GET_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.4.50",
                "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
                "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90",
                "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.5"]
GET_CONTEXTS = 127  # at most 128 presentation contexts: one is the C-GET's own
UID_BATCH = 100  # StudyInstanceUIDs per C-FIND on our side
PENDING = (0xFF00, 0xFF01)


class MigrateError(Exception):
    """A peer cannot be reached or refuses: the run stops with exit status 2."""


@dataclass(frozen=True, slots=True)
class Peer:
    aet: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.aet}@{self.host}:{self.port}"


def parse_peer(text: str) -> Peer:
    """``AET@host:port`` (the host may be a bracketed IPv6 address)."""
    match = re.fullmatch(r"([^@\\]{1,16})@(\[[^\]]+\]|[^:@]+):(\d{1,5})", text.strip())
    if match is None or not 1 <= int(match[3]) <= 65535:
        raise ValueError(f"{text!r} is not AET@host:port")
    return Peer(match[1].strip(), match[2].strip("[]"), int(match[3]))


@dataclass(slots=True)
class Study:
    uid: str
    date: str = ""
    patient_id: str = ""
    source_count: int = 0
    our_count: int = 0
    moved: bool = False
    error: str = ""
    # The source's SOP Instance UIDs, for a study found here by count but not moved by this
    # tool (see ``verify_present``); how many of them are not here.
    source_uids: frozenset[str] | None = None
    absent: int = 0

    @property
    def complete(self) -> bool:
        return self.our_count >= self.source_count and not self.absent


# -- DIMSE helpers ----------------------------------------------------------------------------


class Client:
    """Associations to one peer from our calling AE title."""

    def __init__(self, peer: Peer, calling_aet: str, timeout: float = 60.0,
                 get: bool = False, tls: ssl.SSLContext | None = None) -> None:
        self.peer = peer
        self.tls = tls  # DICOM TLS towards the peer (the source), checked as remotes are
        self.ae = AE(ae_title=calling_aet)
        self.roles: list[Any] = []
        if get:  # C-GET: the sub-operations come back on this association (SCP role)
            self.ae.add_requested_context(STUDY_ROOT_GET)
            for storage in StoragePresentationContexts[:GET_CONTEXTS]:
                uid = str(storage.abstract_syntax)
                self.ae.add_requested_context(uid, GET_SYNTAXES)
                self.roles.append(build_role(uid, scp_role=True))
        else:
            for context in (VERIFICATION, STUDY_ROOT_FIND, STUDY_ROOT_MOVE):
                self.ae.add_requested_context(context)
        self.ae.acse_timeout = self.ae.network_timeout = timeout
        self.ae.dimse_timeout = None  # a C-MOVE of a big study may take a long time
        self.ae.maximum_pdu_size = 262144

    def associate(self, handlers: list[Any] | None = None) -> Association:
        assoc = self.ae.associate(self.peer.host, self.peer.port, ae_title=self.peer.aet,
                                  ext_neg=self.roles or None, evt_handlers=handlers,
                                  tls_args=(self.tls, self.peer.host) if self.tls else None)
        if not assoc.is_established:
            raise MigrateError(f"cannot associate with {self.peer} (rejected, aborted or "
                               "unreachable: is it running and does it know our AE title?)")
        return assoc


def find(assoc: Association, query: Dataset) -> Iterator[Dataset]:
    """Matches of a Study Root C-FIND; MigrateError on a failure status."""
    for status, identifier in assoc.send_c_find(query, STUDY_ROOT_FIND):
        if not status:
            raise MigrateError(f"C-FIND to {assoc.acceptor.ae_title}: no response "
                               "(association aborted or timed out)")
        code = int(status.Status)
        if code in PENDING and identifier is not None:
            yield identifier
        elif code not in PENDING and code != 0:
            comment = status.get("ErrorComment", "")
            raise MigrateError(f"C-FIND to {assoc.acceptor.ae_title} failed: "
                               f"status 0x{code:04X} {comment}".rstrip())


def study_query(date: str = "", uids: str = "") -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = uids
    query.StudyDate = date
    query.PatientID = ""
    query.NumberOfStudyRelatedInstances = ""
    return query


def instance_uids(assoc: Association, study_uid: str) -> set[str]:
    """Every SOP Instance UID of a study (a SERIES-level C-FIND, then IMAGE-level per series:
    the hierarchical model needs each level's unique key)."""
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = study_uid
    query.SeriesInstanceUID = ""
    series = {str(i.get("SeriesInstanceUID", "")).strip() for i in find(assoc, query)}
    found: set[str] = set()
    for series_uid in sorted(series - {""}):
        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.StudyInstanceUID = study_uid
        query.SeriesInstanceUID = series_uid
        query.SOPInstanceUID = ""
        found.update(str(i.get("SOPInstanceUID", "")).strip() for i in find(assoc, query))
    found.discard("")
    return found


def verify_present(src: Association, dst: Association, studies: Iterable[Study]) -> None:
    """For studies that already hold instances here but were not moved by this tool: which
    of the source's are here? (Instances sent here directly, e.g. after go-live, can make up
    the count, before or after a move, while one of the source's is missing.)"""
    for study in studies:
        study.source_uids = frozenset(instance_uids(src, study.uid))
        study.absent = len(study.source_uids - instance_uids(dst, study.uid))


def recheck_absent(dst: Association, study: Study) -> None:
    """After a move: which of the source's instances (as listed before) are here now."""
    if study.source_uids is not None:
        study.absent = len(study.source_uids - instance_uids(dst, study.uid))


def _count(identifier: Dataset) -> int:
    try:
        return int(identifier.get("NumberOfStudyRelatedInstances") or 0)
    except (TypeError, ValueError):
        return 0


# -- inventory --------------------------------------------------------------------------------


def _months(year: int) -> list[str]:
    return [f"{year:04d}{m:02d}01-{year:04d}{m:02d}{calendar.monthrange(year, m)[1]:02d}"
            for m in range(1, 13)]


def _days(month_range: str) -> list[str]:
    year, month = int(month_range[:4]), int(month_range[4:6])
    return [f"{year:04d}{month:02d}{d:02d}"
            for d in range(1, calendar.monthrange(year, month)[1] + 1)]


def _split(date: str) -> list[str]:
    """The finer slices of a slice: a year into months, a month into days; else none."""
    if re.fullmatch(r"\d{4}0101-\d{4}1231", date) and date[:4] == date[9:13]:
        return _months(int(date[:4]))
    if re.fullmatch(r"\d{8}-\d{8}", date) and date[:6] == date[9:15]:
        return _days(date)
    return []


def year_slices(since_year: int, until_year: int) -> list[str]:
    return ([f"-{since_year - 1:04d}1231"]
            + [f"{y:04d}0101-{y:04d}1231" for y in range(since_year, until_year + 1)]
            + [f"{until_year + 1:04d}0101-"])


def inventory(assoc: Association, slices: Iterable[str], limit: int, undated: bool,
              on_slice: Callable[[str, int], None] | None = None) -> dict[str, Study]:
    """Every study of the source by StudyDate slice, splitting a slice above ``limit``."""
    studies: dict[str, Study] = {}
    pending = list(slices)
    pending.reverse()
    while pending:
        date = pending.pop()
        found = list(find(assoc, study_query(date)))
        finer = _split(date) if len(found) > limit else []
        if finer:
            log.debug("slice %s: %d studies, split into %d", date, len(found), len(finer))
            pending.extend(reversed(finer))
            continue
        for identifier in found:
            uid = str(identifier.get("StudyInstanceUID", "")).strip()
            if uid:
                studies[uid] = Study(uid, str(identifier.get("StudyDate", "")),
                                     str(identifier.get("PatientID", "")), _count(identifier))
        if on_slice is not None:
            on_slice(date, len(found))
    if undated:
        for identifier in find(assoc, study_query()):
            uid = str(identifier.get("StudyInstanceUID", "")).strip()
            if uid and uid not in studies and not str(identifier.get("StudyDate", "")).strip():
                studies[uid] = Study(uid, "", str(identifier.get("PatientID", "")),
                                     _count(identifier))
    return studies


def counts(assoc: Association, uids: list[str]) -> dict[str, int]:
    """NumberOfStudyRelatedInstances per study (absent studies: 0), by UID lists."""
    result = dict.fromkeys(uids, 0)
    for start in range(0, len(uids), UID_BATCH):
        batch = uids[start:start + UID_BATCH]
        for identifier in find(assoc, study_query(uids="\\".join(batch))):
            uid = str(identifier.get("StudyInstanceUID", "")).strip()
            if uid in result:
                result[uid] = _count(identifier)
    return result


# -- state ------------------------------------------------------------------------------------


class State:
    """Done studies (UID -> instance count), rewritten atomically after each one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.done: dict[str, int] = {}
        try:
            data = json.loads(path.read_text())
            self.done = {str(k): int(v) for k, v in data.get("done", {}).items()}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("ignoring unreadable migration state %s: %s", path, exc)

    def mark(self, uid: str, count: int) -> None:
        with self.lock:
            self.done[uid] = count
            self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            json.dump({"done": self.done}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)


def _state_name(peer: Peer) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", f"{peer.aet}-{peer.host}-{peer.port}")
    return f"migrate-{safe}.json"


# -- progress ---------------------------------------------------------------------------------


class Progress:
    """One updating line on a terminal, else a line every few seconds (on stderr)."""

    def __init__(self, total: int, instances: int, stream: IO[str] = sys.stderr) -> None:
        self.total, self.instances, self.stream = total, instances, stream
        self.tty = stream.isatty()
        self.interval = 0.2 if self.tty else 5.0
        self.started = self._last = time.monotonic()
        self.done = self.moved_instances = self.failed = 0
        self.lock = threading.Lock()

    def add(self, instances: int, failed: bool) -> None:
        with self.lock:
            self.done += 1
            self.moved_instances += instances
            self.failed += failed
        self.tick()

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        return (f"{self.done}/{self.total} studies  {self.moved_instances}/{self.instances} "
                f"instances  {self.moved_instances / elapsed:,.0f} instances/s  "
                f"failed {self.failed}")

    def tick(self, force: bool = False) -> None:
        now = time.monotonic()
        with self.lock:
            if not force and now - self._last < self.interval:
                return
            self._last = now
            self.stream.write(("\r\x1b[K" if self.tty else "") + self.line()
                              + ("" if self.tty else "\n"))
            self.stream.flush()

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K")
        self.stream.flush()


# -- transfer ---------------------------------------------------------------------------------


def _study_query(study: Study) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study.uid
    return query


def _outcome(operation: str, responses: Iterable[tuple[Dataset | None, Any]]) -> str:
    """"" when a C-MOVE/C-GET's responses end in success, else why not."""
    for status, _identifier in responses:
        if not status:
            return f"no {operation} response (association aborted or timed out)"
        code = int(status.Status)
        failed = int(status.get("NumberOfFailedSuboperations") or 0)
        if code not in PENDING and code != 0:
            comment = str(status.get("ErrorComment", "")).strip()
            return f"{operation} status 0x{code:04X}" + (f" ({comment})" if comment else "") + (
                f", {failed} failed sub-operations" if failed else "")
    return ""


def move_study(assoc: Association, study: Study, destination: str) -> str:
    """C-MOVE one study to ``destination``; "" on success, else why not."""
    return _outcome("C-MOVE", assoc.send_c_move(_study_query(study), destination,
                                                STUDY_ROOT_MOVE))


class Receiver:
    """C-STORE sub-operations of our C-GETs, ingested through the archive's write path.

    Runs one event loop thread for ``Ingest.store``; each pynetdicom association thread waits
    for its instance to be durable and indexed before answering the sub-operation.
    """

    def __init__(self, archive: Archive, source_aet: str) -> None:
        import asyncio

        self.archive = archive
        self.source_aet = source_aet
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="migrate-ingest",
                                       daemon=True)
        self.thread.start()

    def handle_store(self, event: Any) -> int:
        """EVT_C_STORE: the encoded data set as received (never decoded here)."""
        import asyncio

        from pacs.errors import IngestError

        request = event.request
        data = request.DataSet.getvalue()
        coroutine = self.archive.ingest.store(
            data, transfer_syntax_uid=str(event.context.transfer_syntax),
            sop_class_uid=str(request.AffectedSOPClassUID),
            sop_instance_uid=str(request.AffectedSOPInstanceUID), source_aet=self.source_aet)
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            future.result()
        except IngestError as exc:
            log.warning("C-GET sub-operation %s refused: %s",
                        request.AffectedSOPInstanceUID, exc.comment)
            return exc.status
        except Exception:
            log.exception("C-GET sub-operation %s failed", request.AffectedSOPInstanceUID)
            return 0xA700
        return 0x0000

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


def _open_receiver(settings: Settings, source_aet: str) -> tuple[Receiver, int]:
    """An archive with its own import writer (``importN``) and the receiver ingesting into it;
    the descriptor holding the writer's lock."""
    import dataclasses

    from pacs.archive import Archive
    from pacs.importer import _lock_writer, recover_stale_writers

    settings = dataclasses.replace(settings, on_duplicate="keep")
    logging.getLogger("pacs.ingest").setLevel(logging.WARNING)  # duplicates: counted by FIND
    recover_stale_writers(settings)
    writer, lock_fd = _lock_writer(settings, 0)
    try:
        archive = Archive.open(settings, worker_id=0, writer_id=writer)
    except BaseException:
        os.close(lock_fd)
        raise
    return Receiver(archive, source_aet), lock_fd


def get_study(assoc: Association, study: Study) -> str:
    """C-GET one study (the sub-operations go to the association's handler); "" on
    success, else why not."""
    return _outcome("C-GET", assoc.send_c_get(_study_query(study), STUDY_ROOT_GET))


def _mover(source: Client, ours: Client, work: queue.Queue[Study | None],
           destination: str, state: State, progress: Progress,
           stop: threading.Event, receiver: Receiver | None = None) -> None:
    handlers = [(evt.EVT_C_STORE, receiver.handle_store)] if receiver is not None else None
    src: Association | None = None
    dst: Association | None = None
    try:
        while not stop.is_set():
            study = work.get()
            if study is None:
                return
            before = study.our_count
            try:
                if src is None or not src.is_established:
                    src = source.associate(handlers)
                if dst is None or not dst.is_established:
                    dst = ours.associate()
                study.error = (get_study(src, study) if receiver is not None
                               else move_study(src, study, destination))
                study.moved = True
                study.our_count = counts(dst, [study.uid])[study.uid]
                recheck_absent(dst, study)
            except MigrateError as exc:
                study.error = str(exc)
            except Exception as exc:  # a worker never dies silently
                log.exception("moving study %s", study.uid)
                study.error = f"{type(exc).__name__}: {exc}"
            if study.complete:
                study.error = ""
                state.mark(study.uid, study.our_count)
            elif not study.error:
                study.error = (f"{study.absent} of the source's instances are not here"
                               if study.absent else
                               f"{study.our_count} of {study.source_count} instances arrived")
            # What arrived, not what was here before (instances of its own, an earlier run's).
            progress.add(max(0, study.our_count - before), not study.complete)
    finally:
        for assoc in (src, dst):
            if assoc is not None and assoc.is_established:
                assoc.release()


# -- the command ------------------------------------------------------------------------------


def _local_host(settings: Settings) -> str:
    return "127.0.0.1" if settings.host in ("0.0.0.0", "", "::") else settings.host


def write_report(path: Path, source: Peer, ours: Peer, studies: list[Study],
                 summary: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as out:
        out.write(f"# pacs migrate from {source} into {ours}\n")
        for line in summary:
            out.write(f"# {line}\n")
        out.write("# StudyInstanceUID\tStudyDate\tPatientID\tsource\tours\tstatus\n")
        for s in studies:
            missing = max(s.source_count - s.our_count, s.absent)
            status = "ok" if s.complete else f"MISSING {missing}"
            if s.error and not s.complete:
                status += f" ({s.error})"
            out.write(f"{s.uid}\t{s.date}\t{s.patient_id}\t{s.source_count}\t{s.our_count}\t"
                      f"{status}\n")


def migrate_command(settings: Settings, source_text: str, calling_aet: str | None = None,
                    to_host: str | None = None, parallel: int = 4, slice_limit: int = 500,
                    since_year: int = 1900, undated: bool = False,
                    report: Path | None = None, dry_run: bool = False,
                    get: bool = False, tls: bool = False) -> int:
    """Pull every study of ``source_text`` (C-MOVE to our running archive, or C-GET with
    ``get``); the exit status as described in the module docstring."""
    try:
        source = parse_peer(source_text)
    except ValueError as exc:
        print(f"pacs: error: --from: {exc}", file=sys.stderr)
        return 2
    if parallel < 1 or slice_limit < 1:
        print("pacs: error: --parallel and --slice-limit must be at least 1", file=sys.stderr)
        return 2
    if settings.log_level != "DEBUG":  # pynetdicom says a line per association at INFO
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    ours = Peer(settings.aet, to_host or _local_host(settings), settings.port)
    caller = calling_aet or settings.aet
    source_tls = None
    if tls:  # the remote-AE context: tls_ca checks the source, tls_cert is presented
        from pacs.server.tls import client_context

        try:
            source_tls = client_context(settings)
        except ConfigError as exc:
            print(f"pacs: error: --tls: {exc}", file=sys.stderr)
            return 2
    src_client, our_client = Client(source, caller, tls=source_tls), Client(ours, caller)
    started = time.monotonic()
    state = State(settings.state_dir / _state_name(source))
    try:
        src = src_client.associate()
        dst = our_client.associate()
    except MigrateError as exc:
        print(f"pacs: error: {exc}", file=sys.stderr)
        return 2
    try:
        this_year = datetime.date.today().year
        slices = year_slices(since_year, this_year + 1)
        studies = inventory(src, slices, slice_limit, undated)
        uids = sorted(studies, key=lambda u: (studies[u].date, u))
        for uid, n in counts(dst, uids).items():
            studies[uid].our_count = n
        # Instances here that an earlier run of this tool (which moves whole studies) did not
        # bring: counts cannot tell the source's from others, now or after the move, so the
        # instances themselves are compared.
        verify_present(src, dst, [studies[u] for u in uids
                                  if studies[u].source_count and studies[u].our_count
                                  and u not in state.done])
    except MigrateError as exc:
        print(f"pacs: error: {exc}", file=sys.stderr)
        return 2
    finally:
        for assoc in (src, dst):
            if assoc.is_established:
                assoc.release()
    todo = [studies[u] for u in uids if not studies[u].complete]
    skipped = len(uids) - len(todo)
    for uid in uids:  # already here (a previous run, or before): remember them as done
        if studies[uid].complete and state.done.get(uid) != studies[uid].our_count:
            state.done[uid] = studies[uid].our_count
    if skipped:
        with state.lock:
            state._save()
    total_instances = sum(s.source_count for s in studies.values())
    print(f"source {source}: {len(uids)} studies, {total_instances} instances; "
          f"{skipped} studies already here, {len(todo)} to move", file=sys.stderr)
    progress = Progress(len(todo), sum(s.source_count for s in todo))
    move_started = time.monotonic()
    checkpoint_failures = 0
    if todo and not dry_run:
        work: queue.Queue[Study | None] = queue.Queue()
        for study in todo:
            work.put(study)
        threads = min(parallel, len(todo))
        for _ in range(threads):
            work.put(None)
        stop = threading.Event()
        receiver: Receiver | None = None
        lock_fd = -1
        if get:
            try:
                receiver, lock_fd = _open_receiver(settings, source.aet)
            except Exception as exc:
                print(f"pacs: error: cannot open the archive for C-GET: {exc}", file=sys.stderr)
                return 2
        mover_source = Client(source, caller, get=True, tls=source_tls) if get else src_client
        workers = [threading.Thread(target=_mover, name=f"migrate{i}", daemon=True,
                                    args=(mover_source, our_client, work, ours.aet, state,
                                          progress, stop, receiver))
                   for i in range(threads)]
        for t in workers:
            t.start()
        try:
            while any(t.is_alive() for t in workers):
                for t in workers:
                    t.join(0.2)
                progress.tick()
        except KeyboardInterrupt:
            # Sub-operations may be in flight: the archive is left unclosed, its writer's
            # segments are replayed by the next run (or import) like after a kill.
            stop.set()
            progress.finish()
            print("interrupted: run the same command again to resume", file=sys.stderr)
            return 130
        if receiver is not None:
            receiver.close()
            receiver.archive.close()
            os.close(lock_fd)
            # Its last checkpoint made the run's index durable: a failed one is not a success
            # (the writer's replay-all marker makes the next run replay its log).
            checkpoint_failures = receiver.archive.writer.checkpoint_failures
        progress.finish()
    move_seconds = time.monotonic() - move_started
    moved_instances = progress.moved_instances
    # Reconciliation: both sides again, for every study (a study may have changed meanwhile).
    try:
        src, dst = src_client.associate(), our_client.associate()
        try:
            for uid, n in counts(src, uids).items():
                studies[uid].source_count = max(studies[uid].source_count, n)
            for uid, n in counts(dst, uids).items():
                studies[uid].our_count = n
            for study in studies.values():
                recheck_absent(dst, study)
        finally:
            for assoc in (src, dst):
                if assoc.is_established:
                    assoc.release()
    except MigrateError as exc:
        print(f"pacs: warning: final reconciliation incomplete: {exc}", file=sys.stderr)
    ordered = [studies[u] for u in uids]
    missing = [s for s in ordered if not s.complete]
    src_total = sum(s.source_count for s in ordered)
    our_total = sum(max(0, min(s.our_count, s.source_count) - s.absent) for s in ordered)
    rate = moved_instances / move_seconds if move_seconds > 0 else 0.0
    elapsed = time.monotonic() - started
    table = [
        f"{'':<22}{'source':>12}{'here':>12}{'missing':>12}",
        f"{'studies':<22}{len(ordered):>12}{len(ordered) - len(missing):>12}"
        f"{len(missing):>12}",
        f"{'instances':<22}{src_total:>12}{our_total:>12}{src_total - our_total:>12}",
    ]
    summary = [
        f"moved {len(todo) if not dry_run else 0} studies ({moved_instances} instances, "
        f"{rate:,.0f} instances/s), skipped {skipped} already here, "
        f"{len(missing)} incomplete, in {elapsed:.2f} s",
        *table,
    ]
    report_path = report or Path(
        f"migrate-report-{re.sub(r'[^A-Za-z0-9._-]', '_', source.aet)}-"
        f"{time.strftime('%Y%m%d-%H%M%S')}.txt")
    try:
        write_report(report_path, source, ours, ordered, summary)
    except OSError as exc:
        print(f"pacs: cannot write the report {report_path}: {exc.strerror}", file=sys.stderr)
    for line in table:
        print(line)
    shown = 100
    for s in missing[:shown]:
        print(f"missing: study {s.uid} ({s.date or 'no date'}, PatientID {s.patient_id}): "
              f"{s.our_count} of {s.source_count} instances here"
              + (f" ({s.absent} of the source's are not)" if s.absent else "")
              + (f": {s.error}" if s.error else ""))
    if len(missing) > shown:
        print(f"... and {len(missing) - shown} more")
    print(summary[0])
    print(f"report: {report_path}")
    if checkpoint_failures:
        print(f"pacs: error: {checkpoint_failures} catalog checkpoint(s) failed: the index of "
              "this run may not be durable; the next run replays its writer's log",
              file=sys.stderr)
        return 2
    return 1 if missing else 0
