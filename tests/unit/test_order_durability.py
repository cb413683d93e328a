"""Orders (HL7 ORM/ADT, FHIR ServiceRequest) and MPPS steps are durable before their success.

The server's catalog commits without fsync (``durable_commits=False``) and only instances are
replayed from the segment log after a crash, so an order or MPPS step must be synced
(``Catalog.sync``) after its commit and before its ACK AA, 201/200 or MPPS success goes out;
a failed sync must give an error answer instead. A real archive (segment store, catalog writer
thread) in tmp_path; the catalog instance's ``sync`` is wrapped to record when it runs and
what was committed by then, or to fail.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hl7
import httpx
import pytest
from aiohttp.test_utils import TestServer
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pacs.archive import Archive
from pacs.config import Settings
from pacs.dicom import uids
from pacs.errors import CatalogError
from pacs.net import dimse
from pacs.server.messages import Request
from pacs.server.mpps import DB_NAME as MPPS_DB
from pacs.server.mpps import MPPS_SOP_CLASS, PROCESSING_FAILURE, MppsSCP
from pacs.web.app import build_app
from pacs.web.context import WebContext
from pacs.worklist.hl7_orders import INTERNAL_ERROR, OrderHandler
from pacs.worklist.store import WorklistStore
from tests.dicomgen import dataset_bytes
from tests.integration.test_fhir import order as fhir_order
from tests.integration.test_worklist import orm


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    opened = Archive.open(Settings(data_dir=tmp_path / "data", lmdb_map_size=1 << 28))
    assert not opened.catalog.durable_commits  # the server's segment-store catalog
    yield opened
    opened.close()


@dataclass
class Syncs:
    """Calls of the wrapped ``catalog.sync``: what ``probe`` saw committed at each, and the
    thread; ``fail`` makes the next calls raise CatalogError (and not sync)."""

    probe: Callable[[], Any] = lambda: None
    fail: bool = False
    seen: list[Any] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)


@pytest.fixture
def syncs(archive: Archive, monkeypatch: pytest.MonkeyPatch) -> Syncs:
    recorded = Syncs()
    real_sync = archive.catalog.sync

    def sync() -> None:
        recorded.seen.append(recorded.probe())
        recorded.threads.append(threading.current_thread())
        if recorded.fail:
            raise CatalogError("catalog sync failed: [Errno 5] Input/output error")
        real_sync()

    monkeypatch.setattr(archive.catalog, "sync", sync)
    return recorded


def hl7_handler(archive: Archive) -> tuple[OrderHandler, WorklistStore]:
    """The HL7 listener's handler and store, as ``start_hl7_listener`` builds them."""
    store = WorklistStore(archive.catalog, lambda fn: archive.writer.run(fn).result())
    return OrderHandler(store, "", "PACS"), store


def ack(raw: bytes) -> hl7.Message:
    return hl7.parse(raw.decode())


def not_in_writer_thread(archive: Archive, syncs: Syncs) -> None:
    writer_threads = {archive.writer._committer, archive.writer._thread}
    assert syncs.threads and not writer_threads & set(syncs.threads)


# -- HL7 v2 ------------------------------------------------------------------------------------

def test_hl7_order_is_synced_after_its_commit_before_the_aa(archive: Archive,
                                                           syncs: Syncs) -> None:
    handler, store = hl7_handler(archive)
    syncs.probe = lambda: (item := store.get("ORD1^RIS")) and item.status
    answer = ack(handler.handle(orm("NW", "ORD1").encode()))
    events = [*syncs.seen, f"ACK {answer.extract_field('MSA', 1, 1)}"]
    # The sync ran once the order was committed (visible) and before the AA was made.
    assert events == ["SCHEDULED", "ACK AA"]
    not_in_writer_thread(archive, syncs)

    syncs.seen.clear()
    answer = ack(handler.handle(orm("CA", "ORD1").encode()))
    assert [*syncs.seen, str(answer.extract_field("MSA", 1, 1))] == ["CANCELLED", "AA"]


def test_hl7_order_whose_sync_fails_gets_ae_with_err(archive: Archive, syncs: Syncs,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    handler, _store = hl7_handler(archive)
    syncs.fail = True
    answer = ack(handler.handle(orm("NW", "ORD2").encode()))
    assert len(syncs.seen) == 1
    assert str(answer.extract_field("MSA", 1, 1)) == "AE"
    assert str(answer.extract_field("ERR", 1, 3, 1)) == str(INTERNAL_ERROR)
    assert "not stored" in str(answer.segment("ERR"))
    assert any("ORD2NW" in r.getMessage() and "not stored durably" in r.getMessage()
               for r in caplog.records if r.levelname == "ERROR")


def test_hl7_patient_update_is_synced_and_a_failed_sync_is_ae(archive: Archive,
                                                             syncs: Syncs) -> None:
    handler, store = hl7_handler(archive)
    handler.handle(orm("NW", "ORD3", patient="PAT3").encode())
    adt = ("MSH|^~\\&|RIS|HOSP|PACS|HOSP|20260301080000||ADT^A08|ADT1|P|2.5.1\r"
           "PID|1||PAT3^^^HOSP^MR||Roe^Jane||19700215|F\r")
    syncs.seen.clear()
    syncs.probe = lambda: (item := store.get("ORD3^RIS")) and item.patient_name
    answer = ack(handler.handle(adt.encode()))
    assert [*syncs.seen, str(answer.extract_field("MSA", 1, 1))] == ["Roe^Jane", "AA"]

    syncs.fail = True
    answer = ack(handler.handle(adt.replace("ADT1", "ADT2").encode()))
    assert str(answer.extract_field("MSA", 1, 1)) == "AE"


# -- FHIR ----------------------------------------------------------------------------------------

async def post_orders(archive: Archive, *bodies: dict[str, Any]) -> list[httpx.Response]:
    """POST each ServiceRequest in turn to the archive's real web app."""
    async with TestServer(build_app(WebContext.create(archive)), host="127.0.0.1") as server, \
            httpx.AsyncClient(base_url=str(server.make_url(""))) as client:
        return [await client.post("/fhir/ServiceRequest", json=body) for body in bodies]


def test_fhir_order_is_synced_after_its_commit_before_the_201(archive: Archive,
                                                             syncs: Syncs) -> None:
    store = WorklistStore(archive.catalog)
    syncs.probe = lambda: (item := store.get("FORD1")) and item.accession_number
    created, updated = asyncio.run(post_orders(
        archive, fhir_order("FORD1", accession="FACC1"), fhir_order("FORD1", accession="FACC2")))
    assert (created.status_code, updated.status_code) == (201, 200), created.text
    # Each answer came after a sync that found its write committed.
    assert syncs.seen == ["FACC1", "FACC2"]
    not_in_writer_thread(archive, syncs)


def test_fhir_order_whose_sync_fails_gets_a_500_outcome(archive: Archive, syncs: Syncs,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    syncs.fail = True
    (response,) = asyncio.run(post_orders(archive, fhir_order("FORD2")))
    assert len(syncs.seen) == 1
    assert response.status_code == 500, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "not stored" in outcome["issue"][0]["diagnostics"]
    assert any("not stored durably" in r.getMessage() for r in caplog.records
               if r.levelname == "ERROR")


# -- MPPS ----------------------------------------------------------------------------------------

def mpps_request(field: int, uid: str, status: str, study_uid: str = "") -> Request:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    if field == dimse.N_CREATE_RQ:
        step = Dataset()
        step.StudyInstanceUID = study_uid
        step.AccessionNumber = ""
        step.ScheduledProcedureStepID = ""
        ds.ScheduledStepAttributesSequence = [step]
        ds.PatientID = "PAT1"
        ds.Modality = "CT"
    encoded = dataset_bytes(ds, implicit=True)
    uid_tag = (dimse.AFFECTED_SOP_INSTANCE_UID if field == dimse.N_CREATE_RQ
               else dimse.REQUESTED_SOP_INSTANCE_UID)
    class_tag = (dimse.AFFECTED_SOP_CLASS_UID if field == dimse.N_CREATE_RQ
                 else dimse.REQUESTED_SOP_CLASS_UID)
    command = dimse.Command({dimse.COMMAND_FIELD: field, dimse.MESSAGE_ID: 7,
                             class_tag: MPPS_SOP_CLASS, uid_tag: uid,
                             dimse.COMMAND_DATA_SET_TYPE: 0x0000})
    return Request(command, encoded, 1, MPPS_SOP_CLASS, uids.IMPLICIT_VR_LITTLE_ENDIAN,
                   "MODALITY1", "127.0.0.1:104")


def mpps_status(archive: Archive, uid: str) -> str | None:
    with archive.catalog.reader() as txn:
        raw = txn.get(uid.encode(), db=archive.catalog.database(MPPS_DB))
    return None if raw is None else str(json.loads(bytes(raw))["status"])


def test_mpps_steps_are_synced_after_their_commit_before_success(archive: Archive,
                                                                syncs: Syncs) -> None:
    handler, store = hl7_handler(archive)
    handler.handle(orm("NW", "ORD4").encode())
    item = store.get("ORD4^RIS")
    assert item is not None
    scp, uid = MppsSCP(archive), generate_uid()
    syncs.seen.clear()
    syncs.probe = lambda: (mpps_status(archive, uid), (store.get("ORD4^RIS") or item).status)

    created = asyncio.run(scp.n_create(mpps_request(dimse.N_CREATE_RQ, uid, "IN PROGRESS",
                                                    item.study_instance_uid)))
    events = [*syncs.seen, created.command.status]
    assert events == [("IN PROGRESS", "STARTED"), dimse.SUCCESS]
    syncs.seen.clear()
    done = asyncio.run(scp.n_set(mpps_request(dimse.N_SET_RQ, uid, "COMPLETED")))
    assert [*syncs.seen, done.command.status] == [("COMPLETED", "COMPLETED"), dimse.SUCCESS]
    not_in_writer_thread(archive, syncs)


def test_mpps_step_whose_sync_fails_gets_processing_failure(
        archive: Archive, syncs: Syncs, caplog: pytest.LogCaptureFixture) -> None:
    scp, uid = MppsSCP(archive), generate_uid()
    syncs.fail = True
    created = asyncio.run(scp.n_create(mpps_request(dimse.N_CREATE_RQ, uid, "IN PROGRESS")))
    assert len(syncs.seen) == 1
    assert created.command.status == PROCESSING_FAILURE
    assert any("not stored durably" in r.getMessage() for r in caplog.records
               if r.levelname == "ERROR")

    syncs.fail = False
    assert asyncio.run(scp.n_create(mpps_request(dimse.N_CREATE_RQ, generate_uid(),
                                                 "IN PROGRESS"))).command.status == dimse.SUCCESS
    syncs.fail = True
    # The failed N-CREATE's step was committed (not durably): an N-SET on it fails the same.
    updated = asyncio.run(scp.n_set(mpps_request(dimse.N_SET_RQ, uid, "DISCONTINUED")))
    assert updated.command.status == PROCESSING_FAILURE
