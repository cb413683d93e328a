"""Prometheus metrics and the aggregation behind the audit hooks.

Hot paths (C-STORE, the tag scan, the LMDB commit) record into plain in-process aggregates: a
lock, a dict lookup and an addition, under a microsecond each. A flush turns the growth since
the previous flush into prometheus_client metrics: once a second from a daemon thread in each worker
(``start_worker``), at every scrape for the process that serves ``/metrics``, and at exit.

With several worker processes the supervisor points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh
``data_dir/state/metrics`` before spawning them (``prepare_multiprocess_dir``): prometheus_client
then keeps each process's values in its own mmap'd file and ``/metrics`` (worker 0) sums them
with ``MultiProcessCollector`` (``pacs serve`` does this with one worker too). prometheus_client
picks its value class when it is first imported, so this module imports it lazily, never before
the directory is set; a process without the directory (a test, a tool) keeps its metrics in a
private in-memory registry. Gauges that describe the archive as a whole (associations open,
instances and studies indexed) are not stored in files at all: they are read at scrape time.

Label values are bounded: operations and status classes are fixed sets, SOP classes are known
UIDs (keyword) or ``other``, and each process admits the first ``MAX_AET_LABELS`` calling AE
titles it sees, then counts the rest as ``other``.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import threading
import time
import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pacs.dicom.status import is_warning

if TYPE_CHECKING:
    from multiprocessing.sharedctypes import SynchronizedArray

    from aiohttp import web

    from pacs.audit import Action, AuditTrail, Outcome
    from pacs.config import Settings
    from pacs.index.catalog import Catalog
    from pacs.web.context import WebContext

log = logging.getLogger("pacs.metrics")

ENV = "PROMETHEUS_MULTIPROC_DIR"
MAX_AET_LABELS = 100
OTHER = "other"
FLUSH_INTERVAL = 1.0

# Buckets in seconds. DIMSE: a small C-STORE takes about a millisecond, a C-MOVE of a study
# minutes. Scan: 3 µs for a CT header with the compiled scanner, milliseconds for big spooled
# data sets. Commit: one LMDB write transaction of up to ``commit_batch`` instances.
DIMSE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                 5.0, 10.0, 30.0, 60.0, 300.0)
SCAN_BUCKETS = (2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 0.1,
                1.0)
COMMIT_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

HTTP_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"))


class Histogram:
    """Fixed buckets, one optional label; ``observe`` costs a lock and two additions."""

    __slots__ = ("_data", "_lock", "bounds", "documentation", "label", "name")

    def __init__(self, name: str, documentation: str, bounds: Sequence[float],
                 label: str = "") -> None:
        self.name = name
        self.documentation = documentation
        self.label = label
        self.bounds = tuple(bounds)
        self._lock = threading.Lock()
        # label value -> [sum, count of bucket 0, ..., count of +Inf] (not cumulative)
        self._data: dict[str, list[float]] = {}

    def observe(self, value: float, label: str = "") -> None:
        with self._lock:
            entry = self._data.get(label)
            if entry is None:
                entry = self._data[label] = [0.0] * (len(self.bounds) + 2)
            entry[0] += value
            entry[bisect_left(self.bounds, value) + 1] += 1

    def snapshot(self) -> dict[str, list[float]]:
        with self._lock:
            return {k: list(v) for k, v in self._data.items()}


class Counter:
    """Monotonic values by a tuple of label values."""

    __slots__ = ("_data", "_lock", "documentation", "labels", "name")

    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = tuple(labels)
        self._lock = threading.Lock()
        self._data: dict[tuple[str, ...], float] = {}

    def inc(self, labels: tuple[str, ...], amount: float = 1.0) -> None:
        with self._lock:
            self._data[labels] = self._data.get(labels, 0.0) + amount

    def snapshot(self) -> dict[tuple[str, ...], float]:
        with self._lock:
            return dict(self._data)


DIMSE_SECONDS = Histogram("pacs_dimse_request_seconds",
                          "Time from a whole DIMSE request (command and data set received) "
                          "to its final response",
                          DIMSE_BUCKETS, "operation")
SCAN_SECONDS = Histogram("pacs_scan_seconds", "Tag scan of one received instance",
                         SCAN_BUCKETS)
COMMIT_SECONDS = Histogram("pacs_index_commit_seconds", "One LMDB write transaction of stores",
                           COMMIT_BUCKETS)
DIMSE_REQUESTS = Counter("pacs_dimse_requests", "DIMSE requests answered",
                         ("operation", "calling_aet", "status_class"))
INSTANCES_STORED = Counter("pacs_instances_stored",
                           "Instances archived (duplicates kept out are not counted)",
                           ("calling_aet", "sop_class"))
BYTES_RECEIVED = Counter("pacs_bytes_received", "Data set bytes received (C-STORE, STOW-RS)",
                         ("service",))
BYTES_SENT = Counter("pacs_bytes_sent",
                     "Instance bytes sent (C-GET, C-MOVE, WADO-RS, rendered, REST)",
                     ("service",))
HTTP_REQUESTS = Counter("pacs_http_requests", "HTTP responses by route template",
                        ("method", "route", "status"))

HISTOGRAMS: tuple[Histogram, ...] = (DIMSE_SECONDS, SCAN_SECONDS, COMMIT_SECONDS)
COUNTERS: tuple[Counter, ...] = (DIMSE_REQUESTS, INSTANCES_STORED, BYTES_RECEIVED, BYTES_SENT,
                                 HTTP_REQUESTS)

_aets: set[str] = set()
_sop_classes: dict[str, str] = {}


def aet_label(aet: str) -> str:
    """``aet`` as a label value: the first ``MAX_AET_LABELS`` distinct ones, then ``other``."""
    if aet in _aets:
        return aet
    if len(_aets) < MAX_AET_LABELS:
        _aets.add(aet)
        return aet
    return OTHER


def sop_class_label(uid: str) -> str:
    """A SOP Class UID's keyword (``CTImageStorage``); ``other`` for a UID pydicom does not
    know (a peer may put anything in a command)."""
    label = _sop_classes.get(uid)
    if label is None:
        from pydicom.uid import UID

        try:
            label = UID(uid).keyword or OTHER
        except Exception:  # a malformed UID string
            label = OTHER
        if len(_sop_classes) < 10_000:
            _sop_classes[uid] = label
    return label


def status_class(status: int | None) -> str:
    """PS3.7 Annex C status types: success, warning, cancel or failure."""
    if status == 0x0000:
        return "success"
    if status is None:
        return "failure"
    if status == 0xFE00:
        return "cancel"
    if is_warning(status):
        return "warning"
    return "failure"


def http_method_label(method: str) -> str:
    return method if method in HTTP_METHODS else OTHER


# -- multiprocess mode and flushing ----------------------------------------------------------------


def prepare_multiprocess_dir(settings: Settings) -> Path | None:
    """Supervisor, before spawning workers: a fresh metrics folder, named in the environment
    the workers inherit. None (and nothing set) when metrics are off."""
    if not settings.metrics:
        return None
    path = settings.state_dir / "metrics"
    shutil.rmtree(path, ignore_errors=True)  # counters start at zero with each ``pacs serve``
    path.mkdir(parents=True, exist_ok=True)
    os.environ[ENV] = str(path)
    return path


def multiprocess_dir() -> str | None:
    path = os.environ.get(ENV)
    return path if path and os.path.isdir(path) else None


class _Sink:
    """The prometheus_client side: metric objects, and what has been flushed into them."""

    def __init__(self) -> None:
        import prometheus_client as pc

        self.multiprocess = multiprocess_dir() is not None
        # In multiprocess mode the values live in files; no registry exposes these objects.
        self.registry = None if self.multiprocess else pc.CollectorRegistry(auto_describe=True)
        self.histograms: dict[str, Any] = {}
        self.counters: dict[str, Any] = {}
        for hist in HISTOGRAMS:
            self.histograms[hist.name] = pc.Histogram(
                hist.name, hist.documentation, (hist.label,) if hist.label else (),
                buckets=hist.bounds, registry=self.registry)
        for counter in COUNTERS:
            self.counters[counter.name] = pc.Counter(
                counter.name, counter.documentation, counter.labels, registry=self.registry)
        self.flushed_hist: dict[str, dict[str, list[float]]] = {}
        self.flushed_counter: dict[str, dict[tuple[str, ...], float]] = {}
        self.lock = threading.Lock()

    def flush(self) -> None:
        with self.lock:
            for hist in HISTOGRAMS:
                self._flush_histogram(hist)
            for counter in COUNTERS:
                metric = self.counters[counter.name]
                done = self.flushed_counter.setdefault(counter.name, {})
                for labels, value in counter.snapshot().items():
                    delta = value - done.get(labels, 0.0)
                    if delta:
                        (metric.labels(*labels) if labels else metric).inc(delta)
                        done[labels] = value

    def _flush_histogram(self, hist: Histogram) -> None:
        metric = self.histograms[hist.name]
        done = self.flushed_hist.setdefault(hist.name, {})
        for label, values in hist.snapshot().items():
            before = done.get(label) or [0.0] * len(values)
            if values == before:
                continue
            child = metric.labels(label) if hist.label else metric
            # prometheus_client has no public call to add n observations to a bucket: its
            # per-bucket values (non-cumulative) and sum are the documented model, and the
            # unit tests check the exposition that results.
            child._sum.inc(values[0] - before[0])
            for i in range(1, len(values)):
                if values[i] != before[i]:
                    child._buckets[i - 1].inc(values[i] - before[i])
            done[label] = values


_sink: _Sink | None = None
_sink_lock = threading.Lock()


def _get_sink() -> _Sink:
    global _sink
    with _sink_lock:
        if _sink is None:
            _sink = _Sink()
        return _sink


def flush() -> None:
    """Move what was recorded since the last flush into prometheus_client (thread-safe)."""
    try:
        _get_sink().flush()
    except Exception:  # metrics must never break the archive
        log.exception("cannot flush metrics")


_flusher: threading.Thread | None = None
_stop_flusher = threading.Event()
_exit_hooks: list[weakref.WeakMethod[Callable[[], None]]] = []


def start_worker(association_counts: SynchronizedArray[Any] | None = None,
                 interval: float = FLUSH_INTERVAL) -> None:
    """Worker start: remember the shared association counts (read at scrape time) and flush
    every ``interval`` seconds from a daemon thread."""
    global _flusher
    set_association_counts(association_counts)
    if _flusher is not None:
        return
    _stop_flusher.clear()

    def loop() -> None:
        while not _stop_flusher.wait(interval):
            flush()

    _flusher = threading.Thread(target=loop, name="pacs-metrics", daemon=True)
    _flusher.start()


@atexit.register
def _at_exit() -> None:
    """Buffered audit events are written and metrics flushed when a process exits."""
    _stop_flusher.set()
    for ref in list(_exit_hooks):
        hook = ref()
        if hook is None:
            continue
        try:
            hook()
        except Exception:
            log.exception("exit hook failed")
    if _sink is not None:
        flush()


def on_exit(hook: Callable[[], None]) -> None:
    """Run the bound method ``hook`` at exit unless its object is gone by then."""
    _exit_hooks[:] = [r for r in _exit_hooks if r() is not None]
    _exit_hooks.append(weakref.WeakMethod(hook))


def remove_exit_hook(hook: Callable[[], None]) -> None:
    _exit_hooks[:] = [r for r in _exit_hooks if r() is not None and r() != hook]


# -- scrape-time gauges and the exposition ---------------------------------------------------------

_association_counts: SynchronizedArray[Any] | None = None


_association_source: Callable[[], int] | None = None


def set_association_counts(counts: SynchronizedArray[Any] | None) -> None:
    """The supervisor's shared per-worker association counts (read at scrape time)."""
    global _association_counts
    _association_counts = counts


def set_association_source(source: Callable[[], int] | None) -> None:
    """What the gauge reads in the process serving HTTP (the DIMSE server's own count, which
    covers every worker when they share counts, and the single worker otherwise)."""
    global _association_source
    _association_source = source


class _ArchiveCollector:
    """Gauges read when scraped: associations open in every worker, instances indexed."""

    def __init__(self, catalog: Catalog | None, associations: Callable[[], int] | None) -> None:
        self.catalog = catalog
        self.associations = associations

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        if self.associations is not None:
            yield GaugeMetricFamily("pacs_associations_open",
                                    "DICOM associations open, all workers",
                                    value=self.associations())
        if self.catalog is not None:
            stats = self.catalog.statistics()
            for level in ("instances", "studies"):
                yield GaugeMetricFamily(f"pacs_{level}_indexed", f"{level.capitalize()} in the "
                                        "index", value=stats.get(level, 0))


class _Forward:
    """Exposes another registry's metrics through a per-scrape registry."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Any]:
        return list(self.registry.collect())


def _associations() -> int | None:
    if _association_source is not None:
        return _association_source()
    counts = _association_counts
    if counts is None:
        return None
    with counts.get_lock():
        return int(sum(counts[:]))


def exposition(catalog: Catalog | None = None, path: str | None = None) -> tuple[bytes, str]:
    """Blocking: (body, content type) of a scrape; flushes this process's aggregates first.

    ``path`` is a multiprocess folder to read (default: ``PROMETHEUS_MULTIPROC_DIR``)."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    flush()
    registry = CollectorRegistry()
    folder = path or multiprocess_dir()
    if folder is not None:
        MultiProcessCollector(registry, path=folder)  # type: ignore[no-untyped-call]
    else:
        sink_registry = _get_sink().registry
        if sink_registry is not None:
            registry.register(_Forward(sink_registry))
    count = _associations()
    registry.register(_ArchiveCollector(
        catalog, (lambda: count or 0) if count is not None else None))
    return generate_latest(registry), CONTENT_TYPE_LATEST


# -- audit aggregation --------------------------------------------------------------------------


class AuditBuffer:
    """Repeated events (the instances of a study stored over one association, the frames of a
    study rendered for one user) become one audit line with a ``count``.

    An entry is written once it has been idle ``idle`` seconds or open ``max_age`` seconds, and
    everything at ``flush_all`` (exit). ``add`` runs on the event loop: a dict lookup and two
    additions; the timer re-arms itself while entries wait.
    """

    def __init__(self, audit: AuditTrail | None, idle: float = 2.0, max_age: float = 60.0,
                 tick: float = 1.0) -> None:
        self.audit = audit
        self.idle = idle
        self.max_age = max_age
        self.tick = tick
        # (action, outcome, user, source, study, patient, detail) -> [count, bytes, first, last]
        self._entries: dict[tuple[str, ...], list[float]] = {}
        self._timer: Any = None
        self._lock = threading.Lock()
        if audit is not None and audit.enabled:
            on_exit(self.flush_all)

    def add(self, action: Action, user: str, source: str, study_uid: str, patient_id: str,
            detail: str = "", size: int = 0, outcome: Outcome = "success") -> None:
        if self.audit is None or not self.audit.enabled:
            return
        now = time.monotonic()
        key = (action, outcome, user, source, study_uid, patient_id, detail)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self._entries[key] = [1, size, now, now]
            else:
                entry[0] += 1
                entry[1] += size
                entry[3] = now
        if self._timer is None:
            self._arm()

    def _arm(self) -> None:
        import asyncio  # here: the supervisor imports this module and never needs asyncio

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a tool): the exit hook writes them
            return
        self._timer = loop.call_later(self.tick, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.flush(time.monotonic())
        if self._entries:
            self._arm()

    def flush(self, now: float) -> None:
        """Write the entries idle or old enough at ``now`` (monotonic seconds)."""
        with self._lock:
            due = [k for k, v in self._entries.items()
                   if now - v[3] >= self.idle or now - v[2] >= self.max_age]
            taken = [(k, self._entries.pop(k)) for k in due]
        for key, entry in taken:
            self._write(key, entry)

    def flush_all(self) -> None:
        with self._lock:
            taken = list(self._entries.items())
            self._entries.clear()
        for key, entry in taken:
            self._write(key, entry)

    def close(self) -> None:
        """Write everything and forget the exit hook (tests, hand-built archives)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush_all()
        remove_exit_hook(self.flush_all)

    def _write(self, key: tuple[str, ...], entry: list[float]) -> None:
        assert self.audit is not None
        action, outcome, user, source, study_uid, patient_id, detail = key
        extra: dict[str, Any] = {"count": int(entry[0])}
        if entry[1]:
            extra["bytes"] = int(entry[1])
        if detail:
            extra["detail"] = detail
        self.audit.record(cast("Action", action), cast("Outcome", outcome), user=user,
                          source=source,
                          patient_id=patient_id, study_uid=study_uid, **extra)


def query_keys(elements: Mapping[str, str], limit: int = 20) -> dict[str, str]:
    """The matching keys of a query for its audit line: non-empty values, cut short."""
    out: dict[str, str] = {}
    for keyword, value in elements.items():
        if value and value != "*" and keyword != "QueryRetrieveLevel":
            out[keyword] = value[:64]
            if len(out) >= limit:
                break
    return out


_buffers: weakref.WeakKeyDictionary[AuditTrail, AuditBuffer] = weakref.WeakKeyDictionary()


def audit_buffer(audit: AuditTrail | None) -> AuditBuffer:
    """The one buffer of repeated events of an audit trail (shared by DIMSE and HTTP)."""
    if audit is None:
        return AuditBuffer(None)
    buffer = _buffers.get(audit)
    if buffer is None:
        buffer = _buffers[audit] = AuditBuffer(audit)
    return buffer


# -- HTTP ----------------------------------------------------------------------------------------


def http_actor(request: web.Request) -> tuple[str, str]:
    """(user, source) of an HTTP request for the audit trail: the authenticated user name
    ("" when ``http_auth`` is off) and the peer's address (no port: a browser's requests
    come over several connections)."""
    from pacs.web.auth import authenticated_user

    return authenticated_user(request), request.remote or ""


def audit_http(audit: AuditTrail | None, request: web.Request, action: Action,
               outcome: Outcome = "success", **fields: Any) -> None:
    """One audit event for an HTTP request, with its user and source."""
    if audit is None or not audit.enabled:
        return
    user, source = http_actor(request)
    audit.record(action, outcome, user=user, source=source, **fields)


def audit_http_repeated(audit: AuditTrail | None, request: web.Request, action: Action,
                        study_uid: str, patient_id: str, detail: str, size: int = 0) -> None:
    """Like ``audit_http`` for requests that come in runs (the rendered frames of a study):
    one event per user, source and study with a count (``AuditBuffer``)."""
    if audit is None or not audit.enabled:
        return
    user, source = http_actor(request)
    audit_buffer(audit).add(action, user, source, study_uid, patient_id, detail, size)


def install(app: web.Application, ctx: WebContext) -> None:
    """``GET /metrics`` and a count of every HTTP response by method, route and status."""
    from aiohttp import web

    if not ctx.settings.metrics:
        return

    async def count(request: web.Request, response: web.StreamResponse) -> None:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        HTTP_REQUESTS.inc((http_method_label(request.method), route, str(response.status)))

    async def scrape(_request: web.Request) -> web.Response:
        import asyncio

        loop = asyncio.get_running_loop()
        body, content_type = await loop.run_in_executor(ctx.archive.executor, exposition,
                                                        ctx.archive.catalog)
        return web.Response(body=body, headers={"Content-Type": content_type})

    app.on_response_prepare.append(count)
    app.router.add_get("/metrics", scrape)
