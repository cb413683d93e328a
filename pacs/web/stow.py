"""STOW-RS (PS3.18 Section 10.5): store instances sent as multipart/related Part-10 files.

The body is streamed through :class:`pacs.web.multipart.MultipartParser` and counted against
the body limit (413 as soon as it is passed); each part is kept in memory up to
``spool_memory_limit`` and beyond that spooled (data set only) to the worker's spool folder.
Only when the whole body has parsed are the parts handed, concurrently, to the one write path
(:meth:`pacs.ingest.Ingest.store`), so a malformed body stores nothing.

Statuses: 200 all stored, 202 some failed, 409 all failed, 400 malformed body, 413 body too
large, 415 not ``multipart/related; type="application/dicom"``, 507 the data disk is below the
free-space watermark (``min_free_space``). The body lists stored instances
in ReferencedSOPSequence and refused ones in FailedSOPSequence with their FailureReason.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from aiohttp import web

from pacs import metrics
from pacs.dicom import part10
from pacs.dicom.scan import read_index_attributes
from pacs.diskspace import BELOW_WATERMARK, watermark
from pacs.errors import DicomFormatError, IngestError
from pacs.ingest import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    INLINE_LIMIT,
    PROCESSING_FAILURE,
    StoredInstance,
    read_attributes,
)
from pacs.web import dicomjson
from pacs.web.context import WebContext, bad_request, http_error, too_large
from pacs.web.multipart import (
    MultipartError,
    MultipartParser,
    PartData,
    PartEnd,
    PartStart,
    parse_media_type,
)

__all__ = ["routes", "stow"]

log = logging.getLogger("pacs.web.stow")

SOURCE_AET = "STOW-RS"
CONCURRENCY = 64  # instances of one request in the write path at once
_FLUSH = 1 << 20  # spooled parts are written to disk in pieces of this size


_AFTER_SERIES_UID = 0x0020000F  # stop tag of a scan for SeriesInstanceUID (0020,000E)
_PREFIX = b"\x00" * part10.PREAMBLE_LENGTH + b"DICM"
_HEAD = 64 * 1024


# The file meta elements STOW-RS reads (part10.read_file_meta's keywords) and the explicit VR
# headers of group 0002: 4-byte length after 2 reserved bytes for these, 2-byte for the rest.
_META_UIDS = {0x0002: "MediaStorageSOPClassUID", 0x0003: "MediaStorageSOPInstanceUID",
              0x0010: "TransferSyntaxUID"}
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"})
_SHORT_VRS = frozenset({b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS",
                        b"LO", b"LT", b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL",
                        b"US"})
_TAG = struct.Struct("<HH")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


def _quick_meta(buffer: bytearray | bytes, pos: int) -> tuple[dict[str, str], int] | None:
    """The three file meta UIDs STOW-RS uses and the data set's offset, read straight from a
    well-formed group 0002 at ``pos`` (explicit VR little endian, defined lengths, all within
    ``buffer``); None for anything else, left to part10.read_file_meta. Why: the general
    parser (element scan, keyword lookups for every element) took ~8% of the event loop for
    a one-instance request."""
    meta: dict[str, str] = {}
    size = len(buffer)
    while pos + 8 <= size:
        group, elem = _TAG.unpack_from(buffer, pos)
        if group != 0x0002:
            return (meta, pos) if group > 0x0002 else None
        vr = bytes(buffer[pos + 4:pos + 6])
        if vr in _SHORT_VRS:
            length = _U16.unpack_from(buffer, pos + 6)[0]
            start = pos + 8
        elif vr in _LONG_VRS and pos + 12 <= size:
            length = _U32.unpack_from(buffer, pos + 8)[0]
            start = pos + 12
        else:
            return None
        pos = start + length
        if pos > size:
            return None  # also the undefined length
        name = _META_UIDS.get(elem)
        if name is not None:
            if vr != b"UI":
                return None
            meta[name] = buffer[start:pos].decode("latin-1").rstrip(" \x00")
    return None


def read_meta(buffer: bytearray | bytes) -> tuple[dict[str, str], int]:
    """(file meta, offset of the data set) of a Part-10 file; also accepted without the
    preamble and ``DICM`` (group 0002 first, as pydicom writes a data set it did not read).
    The meta holds at least MediaStorageSOPClassUID, MediaStorageSOPInstanceUID and
    TransferSyntaxUID when the file has them (the only ones STOW-RS reads)."""
    if bytes(buffer[128:132]) == b"DICM":
        quick = _quick_meta(buffer, part10.PREAMBLE_LENGTH + 4)
        return quick if quick is not None else part10.read_file_meta(buffer)
    if bytes(buffer[:2]) != b"\x02\x00":
        raise DicomFormatError("no DICM prefix and no file meta information", 0)
    quick = _quick_meta(buffer, 0)
    if quick is not None:
        return quick
    head = _PREFIX + bytes(buffer[:_HEAD])
    try:
        meta, offset = part10.read_file_meta(head)
    except DicomFormatError:
        meta, offset = part10.read_file_meta(_PREFIX + bytes(buffer))
    return meta, offset - len(_PREFIX)


@dataclass
class Part:
    """One received part: its data set (bytes, or a spool file without the meta) or why not."""

    headers: dict[str, str]
    memory_limit: int
    spool_dir: Path
    meta: dict[str, str] | None = None
    buffer: bytearray = field(default_factory=bytearray)
    path: Path | None = None
    file: IO[bytes] | None = None
    size: int = 0
    error: str = ""

    def add(self, data: bytes) -> None:
        if self.error:
            return
        self.size += len(data)
        self.buffer += data
        if self.file is None and len(self.buffer) > self.memory_limit:
            self._spool()
        elif self.file is not None and len(self.buffer) >= _FLUSH:
            self.file.write(self.buffer)
            del self.buffer[:]

    def _spool(self) -> None:
        offset = self._read_meta()
        if self.error:
            del self.buffer[:]
            return
        self.path = self.spool_dir / f"spool-web-{uuid.uuid4().hex}"
        self.file = open(self.path, "wb")  # noqa: SIM115 (closed by finish/discard)
        self.file.write(memoryview(self.buffer)[offset:])
        del self.buffer[:]

    def _read_meta(self) -> int:
        try:
            self.meta, offset = read_meta(self.buffer)
        except DicomFormatError as exc:
            self.error = f"not a DICOM Part-10 file: {exc}"
            return 0
        return offset

    def finish(self) -> None:
        if self.error:
            return
        if self.file is not None:
            self.file.write(self.buffer)
            del self.buffer[:]
            self.file.close()
            return
        offset = self._read_meta()
        if not self.error:
            del self.buffer[:offset]

    @property
    def dataset(self) -> bytes | Path:
        return self.path if self.path is not None else bytes(self.buffer)

    def discard(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def _check_content_type(request: web.Request) -> str:
    """The boundary of an acceptable STOW-RS body; raises 415 / 400."""
    media, params = parse_media_type(request.headers.get("Content-Type", ""))
    if media != "multipart/related":
        raise http_error(web.HTTPUnsupportedMediaType,
                         'expected multipart/related; type="application/dicom"')
    part_type, _ = parse_media_type(params.get("type", "application/dicom"))
    if part_type != "application/dicom":
        raise http_error(web.HTTPUnsupportedMediaType,
                         f'multipart/related of {part_type!r} is not supported; '
                         'send type="application/dicom"')
    boundary = params.get("boundary", "")
    if not boundary:
        raise bad_request("multipart/related without a boundary")
    return boundary


async def _receive(ctx: WebContext, request: web.Request, boundary: str) -> list[Part]:
    """The whole body as parts; raises 400 (malformed) or 413 (too large), leaving no files."""
    if request.content_length is not None and request.content_length > ctx.max_body:
        raise too_large(f"body of {request.content_length} bytes exceeds {ctx.max_body}",
                        ctx.max_body, request.content_length)
    try:
        parser = MultipartParser(boundary)
    except MultipartError as exc:
        raise bad_request(str(exc)) from None
    parts: list[Part] = []
    current: Part | None = None
    received = 0
    memory_limit = max(ctx.settings.spool_memory_limit, 256 * 1024)
    try:
        async for chunk in request.content.iter_any():
            received += len(chunk)
            if received > ctx.max_body:
                raise too_large(f"body exceeds {ctx.max_body} bytes", ctx.max_body, received)
            for event in parser.feed(chunk):
                if isinstance(event, PartData):
                    assert current is not None
                    current.add(event.data)
                elif isinstance(event, PartStart):
                    current = Part(event.headers, memory_limit, ctx.archive.spool_dir)
                    parts.append(current)
                elif isinstance(event, PartEnd):
                    assert current is not None
                    current.finish()
                    current = None
        parser.close()
    except MultipartError as exc:
        for part in parts:
            part.discard()
        raise bad_request(f"malformed multipart body: {exc}") from None
    except ConnectionError as exc:  # the client went away mid-upload: one line, no traceback
        for part in parts:
            part.discard()
        log.info("%s: STOW-RS upload cut off after %d bytes (%s); nothing stored",
                 request.remote, received, exc)
        raise web.HTTPBadRequest(text="upload cut off") from None
    except BaseException:
        for part in parts:
            part.discard()
        raise
    return parts


def _uid_item(sop_class: str, sop_instance: str) -> dict[str, Any]:
    item: dict[str, Any] = {}
    item["00081150"] = {"vr": "UI", "Value": [sop_class]} if sop_class else {"vr": "UI"}
    item["00081155"] = {"vr": "UI", "Value": [sop_instance]} if sop_instance else {"vr": "UI"}
    return item


async def _store_part(
    ctx: WebContext, part: Part, study: str | None, base: str,
    studies: dict[tuple[str, str], int] | None = None,
) -> tuple[bool, dict[str, Any]]:
    """(stored?, the ReferencedSOPSequence or FailedSOPSequence item) for one part;
    ``studies`` counts the stored instances by (study, patient) for the audit trail."""
    meta = part.meta or {}
    sop_class = meta.get("MediaStorageSOPClassUID", "")
    sop_uid = meta.get("MediaStorageSOPInstanceUID", "")

    def failed(reason: int, comment: str) -> tuple[bool, dict[str, Any]]:
        log.info("STOW-RS refused %s: 0x%04X %s", sop_uid or "a part", reason, comment)
        item = _uid_item(sop_class, sop_uid)
        item["00081197"] = {"vr": "US", "Value": [reason]}
        return False, item

    part_type, _ = parse_media_type(part.headers.get("content-type", "application/dicom"))
    if part_type != "application/dicom":
        return failed(CANNOT_UNDERSTAND, f"part of type {part_type!r}")
    if part.error:
        return failed(CANNOT_UNDERSTAND, part.error)
    syntax = meta.get("TransferSyntaxUID", "")
    if not syntax:
        return failed(CANNOT_UNDERSTAND, "file meta without a TransferSyntaxUID")
    dataset = part.dataset
    archive = ctx.archive
    try:
        if study is not None:
            loop = asyncio.get_running_loop()
            if isinstance(dataset, bytes) and len(dataset) <= INLINE_LIMIT:
                attributes = read_attributes(dataset, syntax, sop_uid or None)
            else:
                attributes = await loop.run_in_executor(
                    archive.executor, read_attributes, dataset, syntax, sop_uid or None)
            if attributes["StudyInstanceUID"] != study:
                return failed(DATASET_DOES_NOT_MATCH_SOP_CLASS,
                              "StudyInstanceUID differs from the request's study")
        stored = await archive.ingest.store(
            dataset, transfer_syntax_uid=syntax, sop_class_uid=sop_class,
            sop_instance_uid=sop_uid or None, source_aet=SOURCE_AET)
    except IngestError as exc:
        return failed(exc.status, exc.comment)
    except Exception as exc:  # never leave a request hanging on an unexpected failure
        log.exception("STOW-RS: cannot store %s", sop_uid)
        return failed(PROCESSING_FAILURE, f"{type(exc).__name__}: {exc}")
    uid = stored.sop_instance_uid or sop_uid
    item = _uid_item(sop_class, uid)
    where = _stored_where(stored, dataset, syntax)
    if where is None:  # a kept duplicate (the index holds another data set), a spooled part
        record = archive.catalog.get_instance(uid)
        if record is not None:
            a = record.attributes
            where = (a["StudyInstanceUID"], a["SeriesInstanceUID"], a.get("PatientID", ""))
    if where is not None:
        study_uid, series_uid, patient_id = where
        if studies is not None:
            key = (study_uid, patient_id)
            studies[key] = studies.get(key, 0) + 1
        if stored.outcome != "duplicate_kept":
            metrics.INSTANCES_STORED.inc((SOURCE_AET, metrics.sop_class_label(sop_class)))
        item["00081190"] = {"vr": "UR", "Value": [
            f"{base}/dicom-web/studies/{study_uid}/series/{series_uid}/instances/{uid}"]}
    return True, item


def _stored_where(
    stored: StoredInstance, dataset: bytes | Path, syntax: str
) -> tuple[str, str, str] | None:
    """(study, series, patient) of an instance just indexed from the in-memory ``dataset``,
    without reading its record back (a read transaction and a JSON decode, ~15 µs): the study
    and patient come with ``stored``, the series from a scan that stops right after it, the
    same decoding ingest indexed. None when only the index can tell."""
    if stored.outcome == "duplicate_kept" or not stored.study_uid or not isinstance(
            dataset, bytes):
        return None
    try:
        series = read_index_attributes(dataset, syntax, stop_tag=_AFTER_SERIES_UID).get(
            "SeriesInstanceUID", "")
    except DicomFormatError:
        return None
    return (stored.study_uid, series, stored.patient_id) if series else None


def _audit_store(ctx: WebContext, request: web.Request, studies: dict[tuple[str, str], int],
                 failed: int) -> None:
    """One audit "store" event per study of the request, and one for the refused parts."""
    audit = ctx.archive.audit
    for (study_uid, patient_id), count in studies.items():
        metrics.audit_http(audit, request, "store", patient_id=patient_id, study_uid=study_uid,
                           operation="STOW-RS", count=count)
    if failed:
        metrics.audit_http(audit, request, "store", "failure", operation="STOW-RS",
                           count=failed)


async def stow(ctx: WebContext, request: web.Request, study: str | None) -> web.Response:
    boundary = _check_content_type(request)
    space = watermark(ctx.settings)
    if space.below_watermark():  # refused whole, before reading the body
        log.warning("STOW-RS from %s refused: %s", request.remote, BELOW_WATERMARK)
        raise http_error(web.HTTPInsufficientStorage, BELOW_WATERMARK)
    parts = await _receive(ctx, request, boundary)
    space.note_written(sum(part.size for part in parts))
    if space.below_watermark():  # crossed while the body came in: store none of it
        for part in parts:
            part.discard()
        log.warning("STOW-RS from %s refused: %s", request.remote, BELOW_WATERMARK)
        raise http_error(web.HTTPInsufficientStorage, BELOW_WATERMARK)
    base = ctx.base_url(request)
    metrics.BYTES_RECEIVED.inc(("STOW-RS",), sum(p.size for p in parts))
    studies: dict[tuple[str, str], int] = {}
    try:
        if len(parts) == 1:  # the common case: no task, semaphore and gather to set up
            results = [await _store_part(ctx, parts[0], study, base, studies)]
        else:
            gate = asyncio.Semaphore(CONCURRENCY)

            async def one(part: Part) -> tuple[bool, dict[str, Any]]:
                async with gate:
                    return await _store_part(ctx, part, study, base, studies)

            results = await asyncio.gather(*(one(p) for p in parts))
    finally:
        for part in parts:
            part.discard()
    _audit_store(ctx, request, studies, sum(1 for ok, _ in results if not ok))
    stored = [item for ok, item in results if ok]
    failed = [item for ok, item in results if not ok]
    body: dict[str, Any] = {}
    if study:
        body["00081190"] = {"vr": "UR", "Value": [f"{base}/dicom-web/studies/{study}"]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": stored}
    status = 200 if not failed else 202 if stored else 409
    return web.Response(status=status, body=dicomjson.dumps(body),
                        content_type=dicomjson.MEDIA_TYPE)


def routes(ctx: WebContext) -> list[web.RouteDef]:
    async def store_any(request: web.Request) -> web.StreamResponse:
        return await stow(ctx, request, None)

    async def store_study(request: web.Request) -> web.StreamResponse:
        return await stow(ctx, request, request.match_info["study"])

    return [
        web.post("/dicom-web/studies", store_any),
        web.post("/dicom-web/studies/{study}", store_study),
    ]

