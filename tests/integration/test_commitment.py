"""Storage Commitment Push Model (PS3.4 Annex J) with pynetdicom as the SCU: the report on the
requesting association, failures for unknown and damaged instances, the report on a new
association when the requester released (our own client, releasing in the same write as its
N-ACTION), refusals of bad requests, reports queued in the index and retried until the
requester's SCP listens, also across a restart of the archive."""

from __future__ import annotations

import queue
import re
import time
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StorageCommitmentPushModel,
)

from pacs.index.catalog import Catalog
from pacs.net import AssociateAccepted
from tests.conftest import free_port
from tests.dicomgen import dataset_bytes, make_ct, write
from tests.integration.archive_check import flip_last_byte, stored_instance
from tests.netclient import Client

pytestmark = pytest.mark.integration

WELL_KNOWN = "1.2.840.10008.1.20.1.1"
NO_SUCH_OBJECT_INSTANCE, PROCESSING_FAILURE = 0x0112, 0x0110
SERVER_ARGS = ("--acse-timeout", "5", "--idle-timeout", "10", "--workers", "2")


def config(tmp_path: Path, **remotes: int) -> str:
    path = tmp_path / "pacs.toml"
    path.write_text("".join(f'[remote.{aet}]\nhost = "127.0.0.1"\nport = {port}\n'
                            for aet, port in remotes.items()))
    return str(path)


def store_cts(port: int, tmp_path: Path, count: int) -> list[str]:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    uids = []
    try:
        for i in range(count):
            ds = make_ct(instance_number=i)
            status = assoc.send_c_store(write(ds, tmp_path / f"ct{i}.dcm"))
            assert status.Status == 0x0000
            uids.append(str(ds.SOPInstanceUID))
    finally:
        assoc.release()
    return uids


def action_info(transaction: str, refs: list[tuple[str, str]]) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = transaction
    items = []
    for sop_class, sop_instance in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        items.append(item)
    ds.ReferencedSOPSequence = items
    return ds


def queued_reports(archive) -> list[bytes]:
    """Keys of the reports still queued in a stopped archive's index."""
    assert archive.stop() == 0
    with Catalog(archive.data_dir / "index", readonly=True) as catalog, catalog.reader() as txn, \
            txn.cursor(db=catalog.database("commitment_outbox")) as cursor:
        return [bytes(key) for key, _value in cursor]


def requester(aet: str = "COMMITSCU", syntax: str = ExplicitVRLittleEndian) -> AE:
    ae = AE(ae_title=aet)
    ae.add_requested_context(StorageCommitmentPushModel, [syntax])
    return ae


def request_on_same_association(port: int, ds: Dataset, syntax: str = ExplicitVRLittleEndian):
    """N-ACTION, wait for the N-EVENT-REPORT on the same association: (event type, info)."""
    reports: queue.Queue = queue.Queue()

    def on_report(event):
        reports.put((event.event_type, event.event_information))
        return 0x0000, None

    ae = requester(syntax=syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS",
                         ext_neg=[build_role(StorageCommitmentPushModel, scu_role=True,
                                             scp_role=True)],
                         evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    assert assoc.is_established
    try:
        status, _reply = assoc.send_n_action(ds, 1, StorageCommitmentPushModel, WELL_KNOWN)
        assert status.Status == 0x0000
        return reports.get(timeout=20)
    finally:
        assoc.release()


def references(info: Dataset) -> list[tuple[str, str]]:
    return [(item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID)
            for item in info.get("ReferencedSOPSequence", [])]


def failures(info: Dataset) -> dict[str, int]:
    return {item.ReferencedSOPInstanceUID: item.FailureReason
            for item in info.get("FailedSOPSequence", [])}


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_all_stored_instances_committed(archive_factory, tmp_path: Path, syntax) -> None:
    archive = archive_factory(*SERVER_ARGS)
    uids = store_cts(archive.port, tmp_path, 3)
    transaction = generate_uid()
    refs = [(CTImageStorage, uid) for uid in uids]
    event_type, info = request_on_same_association(archive.port,
                                                   action_info(transaction, refs), syntax)
    assert event_type == 1
    assert info.TransactionUID == transaction
    assert references(info) == refs
    assert all(item.RetrieveAETitle == "PACS" for item in info.ReferencedSOPSequence)
    assert "FailedSOPSequence" not in info
    assert re.search(rf"storage commitment {transaction} reported on same association",
                     archive.log())
    assert queued_reports(archive) == []  # delivered: dequeued


def test_unknown_and_corrupted_instances_fail(archive_factory, tmp_path: Path) -> None:
    archive = archive_factory(*SERVER_ARGS)
    good, damaged = store_cts(archive.port, tmp_path, 2)
    found = stored_instance(archive.data_dir, damaged)
    assert found is not None
    flip_last_byte(archive.data_dir, found[0].location)
    unknown = generate_uid()
    transaction = generate_uid()
    refs = [(CTImageStorage, good), (CTImageStorage, unknown), (CTImageStorage, damaged)]
    event_type, info = request_on_same_association(archive.port, action_info(transaction, refs))
    assert event_type == 2
    assert info.TransactionUID == transaction
    assert references(info) == [(CTImageStorage, good)]
    assert failures(info) == {unknown: NO_SUCH_OBJECT_INSTANCE, damaged: PROCESSING_FAILURE}
    assert all(item.ReferencedSOPClassUID == CTImageStorage
               for item in info.FailedSOPSequence)


def request_then_release(port: int, calling: str, ds: Dataset) -> int:
    """N-ACTION and A-RELEASE sent together (``tests.netclient``): the association is gone
    before the check can end, so the report can only go out on a new one. pynetdicom waits for
    the N-ACTION-RSP before it releases; the check then sometimes ended first, and the report
    reached pynetdicom mid-release, where its reactor thread raises answering it (Evt9 in
    Sta7), or before it, where its default handler answers a failure."""
    with Client(port, calling=calling, contexts=(
            (StorageCommitmentPushModel, (ExplicitVRLittleEndian,)),)) as client:
        assert isinstance(client.associate(), AssociateAccepted)
        responses = client.release_after(client.n_action_rq(
            StorageCommitmentPushModel, WELL_KNOWN, 1, dataset_bytes(ds)))
    assert [r.command.get(0x0100) for r in responses] == [0x8130]  # the N-ACTION-RSP only
    status = responses[0].command.status
    assert status is not None
    return status


def test_report_on_new_association_after_release(archive_factory, tmp_path: Path) -> None:
    reports: queue.Queue = queue.Queue()

    def on_report(event):
        reports.put((event.assoc.requestor.ae_title, event.event_type,
                     event.event_information))
        return 0x0000, None

    scp_ae = AE(ae_title="COMMITSCU")
    scp_ae.add_supported_context(StorageCommitmentPushModel,
                                 [ExplicitVRLittleEndian, ImplicitVRLittleEndian],
                                 scu_role=True, scp_role=True)
    scp_port = free_port()
    server = scp_ae.start_server(("127.0.0.1", scp_port), block=False,
                                 evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    try:
        archive = archive_factory(*SERVER_ARGS, "--config",
                                  config(tmp_path, COMMITSCU=scp_port))
        uids = store_cts(archive.port, tmp_path, 2)
        transaction = generate_uid()
        refs = [(CTImageStorage, uid) for uid in uids]
        status = request_then_release(archive.port, "COMMITSCU", action_info(transaction, refs))
        assert status == 0x0000
        calling, event_type, info = reports.get(timeout=20)
        assert calling == "PACS"
        assert event_type == 1
        assert info.TransactionUID == transaction
        assert references(info) == refs
        deadline = time.monotonic() + 5
        while "reported on a new association" not in archive.log():
            assert time.monotonic() < deadline, archive.log()
            time.sleep(0.05)
        assert "reported on same association" not in archive.log()
    finally:
        server.shutdown()


def test_unreportable_commitment_is_logged(archive_factory, tmp_path: Path) -> None:
    archive = archive_factory(*SERVER_ARGS)
    transaction = generate_uid()
    status = request_then_release(archive.port, "NOWHERE",
                                  action_info(transaction, [(CTImageStorage, generate_uid())]))
    assert status == 0x0000
    deadline = time.monotonic() + 10
    while f"storage commitment {transaction} (event type 2) cannot be reported" \
            not in archive.log():
        assert time.monotonic() < deadline, archive.log()
        time.sleep(0.05)


def test_bad_requests_are_refused(archive_factory, tmp_path: Path) -> None:
    archive = archive_factory(*SERVER_ARGS)
    assoc = requester().associate("127.0.0.1", archive.port, ae_title="PACS")
    assert assoc.is_established
    try:
        no_transaction = Dataset()
        no_transaction.ReferencedSOPSequence = [Dataset()]
        status, _ = assoc.send_n_action(no_transaction, 1, StorageCommitmentPushModel,
                                        WELL_KNOWN)
        assert status.Status == PROCESSING_FAILURE
        assert status.ErrorComment == "no TransactionUID"

        empty = Dataset()
        empty.TransactionUID = generate_uid()
        status, _ = assoc.send_n_action(empty, 1, StorageCommitmentPushModel, WELL_KNOWN)
        assert status.Status == PROCESSING_FAILURE
        assert "ReferencedSOPSequence" in status.ErrorComment

        half = action_info(generate_uid(), [(CTImageStorage, "")])
        status, _ = assoc.send_n_action(half, 1, StorageCommitmentPushModel, WELL_KNOWN)
        assert status.Status == PROCESSING_FAILURE
        assert "lacks a UID" in status.ErrorComment

        good = action_info(generate_uid(), [(CTImageStorage, generate_uid())])
        status, _ = assoc.send_n_action(good, 2, StorageCommitmentPushModel, WELL_KNOWN)
        assert status.Status == 0x0123
    finally:
        assoc.release()
    assert "storage commitment request refused: no TransactionUID" in archive.log()


def commitment_scp(port: int):
    """A pynetdicom requester SCP on ``port`` taking N-EVENT-REPORTs: (server, reports)."""
    reports: queue.Queue = queue.Queue()

    def on_report(event):
        reports.put((event.event_type, event.event_information))
        return 0x0000, None

    ae = AE(ae_title="COMMITSCU")
    ae.add_supported_context(StorageCommitmentPushModel,
                             [ExplicitVRLittleEndian, ImplicitVRLittleEndian],
                             scu_role=True, scp_role=True)
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    return server, reports


def request_and_release(port: int, transaction: str, refs: list[tuple[str, str]]) -> None:
    assoc = requester().associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    status, _ = assoc.send_n_action(action_info(transaction, refs), 1,
                                    StorageCommitmentPushModel, WELL_KNOWN)
    assoc.release()
    assert status.Status == 0x0000


def wait_log(archive, pattern: str, offset: int = 0, timeout: float = 30) -> None:
    archive.wait_log(pattern, offset, timeout)


def failed_attempt(transaction: str, attempt: int) -> str:
    return rf"storage commitment {transaction} \(event type 1\) cannot be reported " \
           rf"\(attempt {attempt}\)"


@pytest.mark.parametrize("restart", [False, True], ids=["running", "restarted"])
def test_report_retried_until_requester_listens(archive_factory, tmp_path: Path,
                                                restart: bool) -> None:
    scp_port = free_port()  # nothing listens there yet
    archive = archive_factory(*SERVER_ARGS, "--config", config(tmp_path, COMMITSCU=scp_port),
                              env={"PACS_FORWARD_RETRY_BASE": "0.2"})
    uids = store_cts(archive.port, tmp_path, 2)
    transaction = generate_uid()
    refs = [(CTImageStorage, uid) for uid in uids]
    request_and_release(archive.port, transaction, refs)
    wait_log(archive, failed_attempt(transaction, 3))  # retried with a back-off
    offset = len(archive.log())
    if restart:
        assert archive.stop() == 0
        archive.start()
        # Still queued after the restart: worker 0 goes on trying.
        wait_log(archive, rf"storage commitment {transaction} \(event type 1\) cannot be "
                          r"reported \(attempt ([4-9]|\d\d)\)", offset)
        offset = len(archive.log())
    server, reports = commitment_scp(scp_port)
    try:
        event_type, info = reports.get(timeout=30)
        assert event_type == 1
        assert info.TransactionUID == transaction
        assert references(info) == refs
        assert "FailedSOPSequence" not in info
        wait_log(archive, rf"COMMITSCU: storage commitment {transaction} reported on a new "
                          "association", offset)
        assert queued_reports(archive) == []
    finally:
        server.shutdown()
