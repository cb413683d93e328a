"""C-MOVE with real peers: dcmtk movescu and pynetdicom as the SCU, dcmtk storescp as the
destination; counts and statuses; conversion; a refusing, a dying destination; C-CANCEL."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelMove,
)

from pacs.dicom.identifier import encode_identifier
from pacs.net import CommandReceived, dimse
from tests.conftest import free_port, require_tool
from tests.dicomgen import make_ct, write
from tests.integration.archive_check import same_dataset
from tests.netclient import Client

pytestmark = pytest.mark.integration

STUDY_ROOT = StudyRootQueryRetrieveInformationModelMove


def config(tmp_path: Path, **remotes: int) -> str:
    path = tmp_path / "pacs.toml"
    path.write_text("".join(f'[remote.{aet}]\nhost = "127.0.0.1"\nport = {port}\n'
                            for aet, port in remotes.items()))
    return str(path)


def stock(archive, tmp_path: Path, count: int, rows: int = 64, **kwargs: str) -> list[Path]:
    study = make_ct().StudyInstanceUID
    series = [make_ct().SeriesInstanceUID for _ in range(2)]
    files = [write(make_ct(study_uid=study, series_uid=series[i % 2], instance_number=i,
                           rows=rows, columns=rows, **kwargs), tmp_path / f"s{i}.dcm")
             for i in range(count)]
    proc = subprocess.run([require_tool("storescu"), "-aec", "PACS", "127.0.0.1",
                           str(archive.port), *map(str, files)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return files


def movescu(port: int, destination: str, *args: str) -> str:
    proc = subprocess.run([require_tool("movescu"), "-d", "-aec", "PACS", "-aem", destination,
                           *args, "127.0.0.1", str(port)], capture_output=True, text=True,
                          timeout=120)
    return proc.stdout + proc.stderr


def count(output: str, kind: str) -> int:
    """The last response's count of ``kind`` (Completed, Failed, ...) in movescu -d output."""
    found = re.findall(rf"{kind} Suboperations\s*:\s*(\d+|none)", output)
    assert found, output[-2000:]
    return 0 if found[-1] == "none" else int(found[-1])


def completed(output: str) -> int:
    return count(output, "Completed")


def test_movescu_every_level_delivers_identical_instances(archive_factory, scp_factory,
                                                          tmp_path: Path) -> None:
    scp = scp_factory()
    archive = archive_factory("--config", config(tmp_path, STORESCP=scp.port))
    files = stock(archive, tmp_path, 6)
    first = pydicom.dcmread(files[0])
    out = movescu(archive.port, "STORESCP", "-S", "-k", "QueryRetrieveLevel=STUDY",
                  "-k", f"StudyInstanceUID={first.StudyInstanceUID}")
    assert "DIMSE Status                  : 0x0000" in out
    assert completed(out) == 6
    out = movescu(archive.port, "STORESCP", "-S", "-k", "QueryRetrieveLevel=SERIES",
                  "-k", f"StudyInstanceUID={first.StudyInstanceUID}",
                  "-k", f"SeriesInstanceUID={first.SeriesInstanceUID}")
    assert completed(out) == 3
    out = movescu(archive.port, "STORESCP", "-S", "-k", "QueryRetrieveLevel=IMAGE",
                  "-k", f"StudyInstanceUID={first.StudyInstanceUID}",
                  "-k", f"SeriesInstanceUID={first.SeriesInstanceUID}",
                  "-k", f"SOPInstanceUID={first.SOPInstanceUID}")
    assert completed(out) == 1
    out = movescu(archive.port, "STORESCP", "-P", "-k", "QueryRetrieveLevel=PATIENT",
                  "-k", "PatientID=PID001")
    assert completed(out) == 6
    got = scp.received()
    assert len(got) == 6
    for path in files:
        original = pydicom.dcmread(path)
        assert same_dataset(got[original.SOPInstanceUID], original)


def test_unknown_destination_is_a801(archive, tmp_path: Path) -> None:
    files = stock(archive, tmp_path, 1)
    out = movescu(archive.port, "NOWHERE", "-S", "-k", "QueryRetrieveLevel=STUDY",
                  "-k", f"StudyInstanceUID={pydicom.dcmread(files[0]).StudyInstanceUID}")
    assert "MoveDestinationUnknown" in out


def test_refusing_destination_fails_every_sub_operation(archive_factory, tmp_path) -> None:
    archive = archive_factory("--config", config(tmp_path, DEAD=free_port()))
    files = stock(archive, tmp_path, 4)
    out = movescu(archive.port, "DEAD", "-S", "-k", "QueryRetrieveLevel=STUDY",
                  "-k", f"StudyInstanceUID={pydicom.dcmread(files[0]).StudyInstanceUID}")
    assert count(out, "Failed") == 4
    assert "dimse status                  : 0xa702" in out.lower()


def test_sub_operations_answered_with_a_warning_are_counted_warnings(
        archive_factory, pynetdicom_scp, tmp_path: Path) -> None:
    """The destination stores each instance and answers 0x0107, a warning of PS3.7 Annex C:
    three warning sub-operations and a final 0xB000, none failed."""
    scp = pynetdicom_scp(status=0x0107)
    archive = archive_factory("--config", config(tmp_path, WARNING=scp.port))
    files = stock(archive, tmp_path, 3)
    out = movescu(archive.port, "WARNING", "-S", "-k", "QueryRetrieveLevel=STUDY",
                  "-k", f"StudyInstanceUID={pydicom.dcmread(files[0]).StudyInstanceUID}")
    assert (count(out, "Warning"), count(out, "Failed"), completed(out)) == (3, 0, 0)
    assert re.findall(r"DIMSE Status\s*:\s*(0x\w+)", out)[-1] == "0xb000"
    assert sorted(scp.stored) == sorted(pydicom.dcmread(f).SOPInstanceUID for f in files)


def test_image_level_uids_not_here_are_failed_sub_operations(archive_factory, scp_factory,
                                                             tmp_path: Path) -> None:
    """IMAGE level naming an instance the archive does not have: that sub-operation fails
    (PS3.4 C.4.2.3.1), listed in the final 0xB000; naming only such instances is 0xA702."""
    scp = scp_factory()
    archive = archive_factory("--config", config(tmp_path, STORESCP=scp.port))
    here = pydicom.dcmread(stock(archive, tmp_path, 1)[0])
    ae = AE(ae_title="PYMOVE")
    ae.add_requested_context(STUDY_ROOT)
    assoc = ae.associate("127.0.0.1", archive.port, ae_title="PACS")
    try:
        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.StudyInstanceUID = here.StudyInstanceUID
        query.SeriesInstanceUID = here.SeriesInstanceUID
        query.SOPInstanceUID = [here.SOPInstanceUID, "1.2.3.4.404"]
        final, identifier = list(assoc.send_c_move(query, "STORESCP", STUDY_ROOT))[-1]
        assert final.Status == 0xB000
        assert (final.NumberOfCompletedSuboperations,
                final.NumberOfFailedSuboperations) == (1, 1)
        assert identifier is not None and identifier.FailedSOPInstanceUIDList == "1.2.3.4.404"
        query.SOPInstanceUID = ["1.2.3.4.404", "1.2.3.4.405"]
        final, identifier = list(assoc.send_c_move(query, "STORESCP", STUDY_ROOT))[-1]
        assert final.Status == 0xA702
        assert (final.NumberOfCompletedSuboperations,
                final.NumberOfFailedSuboperations) == (0, 2)
        assert identifier is not None
        assert list(identifier.FailedSOPInstanceUIDList) == ["1.2.3.4.404", "1.2.3.4.405"]
    finally:
        assoc.release()
    assert list(scp.received()) == [here.SOPInstanceUID]


def test_implicit_only_destination_gets_converted(archive_factory, scp_factory, tmp_path):
    scp = scp_factory("+xi")
    archive = archive_factory("--config", config(tmp_path, IMPLICIT=scp.port))
    files = stock(archive, tmp_path, 3)
    out = movescu(archive.port, "IMPLICIT", "-S", "-k", "QueryRetrieveLevel=STUDY",
                  "-k", f"StudyInstanceUID={pydicom.dcmread(files[0]).StudyInstanceUID}")
    assert completed(out) == 3
    got = scp.received()
    for path in files:
        original = pydicom.dcmread(path)
        copy = got[original.SOPInstanceUID]
        assert copy.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
        assert same_dataset(copy, original)


def test_destination_killed_mid_move(archive_factory, scp_factory, tmp_path: Path) -> None:
    scp = scp_factory(name="dying")
    archive = archive_factory("--config", config(tmp_path, DYING=scp.port))
    files = stock(archive, tmp_path, 200, rows=256)

    def kill_once_some_arrived() -> None:
        while sum(1 for _ in scp.directory.iterdir()) < 20 and scp.proc.poll() is None:
            time.sleep(0.005)
        scp.kill()

    killer = threading.Thread(target=kill_once_some_arrived)
    killer.start()
    out = movescu(archive.port, "DYING", "-S", "-k", "QueryRetrieveLevel=STUDY",
                  "-k", f"StudyInstanceUID={pydicom.dcmread(files[0]).StudyInstanceUID}")
    killer.join()
    failed = count(out, "Failed")
    assert failed > 0 and completed(out) + failed == 200
    assert archive.alive()


def test_pynetdicom_move_with_pending_counts_and_cancel(archive_factory, scp_factory,
                                                        tmp_path: Path) -> None:
    scp = scp_factory()
    archive = archive_factory("--config", config(tmp_path, STORESCP=scp.port))
    files = stock(archive, tmp_path, 120, rows=256)
    ae = AE(ae_title="PYMOVE")
    ae.add_requested_context(STUDY_ROOT)
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", archive.port, ae_title="PACS")
    try:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = pydicom.dcmread(files[0]).StudyInstanceUID
        responses = [status for status, _ in assoc.send_c_move(query, "STORESCP", STUDY_ROOT)]
        assert responses[-1].Status == 0x0000
        assert responses[-1].NumberOfCompletedSuboperations == 120
        pending = [r for r in responses[:-1] if r.Status == 0xFF00]
        assert pending and pending[0].NumberOfRemainingSuboperations < 120
    finally:
        assoc.release()


def move_and_cancel(study_uid: str, destination: str,
                    syntax: str) -> tuple[dimse.Command, bytes, dimse.Command]:
    """A C-MOVE-RQ of ``study_uid`` (message 9), its identifier, and a C-CANCEL-RQ of it."""
    move = dimse.Command({
        dimse.AFFECTED_SOP_CLASS_UID: STUDY_ROOT, dimse.COMMAND_FIELD: dimse.C_MOVE_RQ,
        dimse.MESSAGE_ID: 9, dimse.PRIORITY: 0, dimse.MOVE_DESTINATION: destination,
        dimse.COMMAND_DATA_SET_TYPE: dimse.DATA_SET_PRESENT,
    })  # fmt: skip
    cancel = dimse.Command({
        dimse.COMMAND_FIELD: dimse.C_CANCEL_RQ, dimse.MESSAGE_ID_BEING_RESPONDED_TO: 9,
        dimse.COMMAND_DATA_SET_TYPE: dimse.NO_DATA_SET,
    })  # fmt: skip
    identifier = encode_identifier({"QueryRetrieveLevel": "STUDY",
                                    "StudyInstanceUID": study_uid}, syntax)
    return move, identifier, cancel


def final_rsp(client: Client) -> dimse.Command:
    """The first C-MOVE-RSP that is not pending."""
    while True:
        event = client.wait_for(CommandReceived)
        assert isinstance(event, CommandReceived)
        if event.command.status not in (0xFF00, 0xFF01):
            return event.command


def test_c_cancel_right_behind_the_move(archive_factory, scp_factory, tmp_path: Path) -> None:
    """The C-CANCEL-RQ follows the C-MOVE-RQ at once: the move stops with 0xFE00 and counts."""
    scp = scp_factory()
    archive = archive_factory("--config", config(tmp_path, STORESCP=scp.port))
    files = stock(archive, tmp_path, 120, rows=256)
    syntax = "1.2.840.10008.1.2.1"
    move, identifier, cancel = move_and_cancel(pydicom.dcmread(files[0]).StudyInstanceUID,
                                               "STORESCP", syntax)
    with Client(archive.port, contexts=[(STUDY_ROOT, (syntax,))]) as client:
        client.associate()
        context_id, _ = client.context_for(STUDY_ROOT)
        client.sock.sendall(client.assoc.send_command(context_id, move, True)
                            + client.assoc.send_dataset(context_id, identifier)
                            + client.assoc.send_command(context_id, cancel, False))
        final = final_rsp(client)
        client.release()
    assert final.status == 0xFE00
    assert final.get(dimse.NUMBER_OF_COMPLETED_SUBOPERATIONS, 0) < 120
    assert len(scp.received()) < 120


def test_c_cancel_while_the_destination_holds_a_store(archive_factory, pynetdicom_scp,
                                                       tmp_path: Path) -> None:
    """The C-CANCEL-RQ comes while the destination has not answered a C-STORE: the sub-
    operations' association is aborted and the 0xFE00 goes at once. A graceful release
    waited for that C-STORE-RSP first, up to the 10 s connect timeout."""
    scp = pynetdicom_scp(hold=True)
    archive = archive_factory("--config", config(tmp_path, HOLDING=scp.port))
    files = stock(archive, tmp_path, 3)
    syntax = "1.2.840.10008.1.2.1"
    move, identifier, cancel = move_and_cancel(pydicom.dcmread(files[0]).StudyInstanceUID,
                                               "HOLDING", syntax)
    with Client(archive.port, contexts=[(STUDY_ROOT, (syntax,))], timeout=60) as client:
        client.associate()
        context_id, _ = client.context_for(STUDY_ROOT)
        client.sock.sendall(client.assoc.send_command(context_id, move, True)
                            + client.assoc.send_dataset(context_id, identifier))
        assert scp.arrived.wait(20)  # the first C-STORE-RQ waits for its answer
        started = time.monotonic()
        client.sock.sendall(client.assoc.send_command(context_id, cancel, False))
        final = final_rsp(client)
        took = time.monotonic() - started
        client.release()
    assert final.status == 0xFE00
    assert final.get(dimse.NUMBER_OF_COMPLETED_SUBOPERATIONS, 0) == 0
    assert took < 5, f"the C-CANCEL was answered after {took:.1f} s"
    assert scp.stored == []
    assert archive.alive()
