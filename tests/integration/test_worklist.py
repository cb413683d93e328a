"""RIS integration: HL7 ORM^O01 over MLLP into a real `pacs serve`, Modality Worklist C-FIND with
dcmtk findscu and pynetdicom, cancels, negative ACKs, framing errors, persistence over a restart;
OMI^O23 with IPC, ADT^A08 patient updates and ADT^A40 merges on pending items."""

from __future__ import annotations

import socket
import subprocess
import warnings
from pathlib import Path

import hl7
import pydicom
import pytest
from hl7.client import MLLPClient
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]

from tests.conftest import free_port, require_tool

pytestmark = pytest.mark.integration

SB, EB, CR = b"\x0b", b"\x1c", b"\r"


def orm(control: str, placer: str, *, patient: str = "PAT1", name: str = "Doe^John^Q",
        accession: str = "ACC1", modality: str = "CT", station: str = "CT01",
        when: str = "20260301083000", code: str = "CTHEAD^CT Head w/o contrast^LOCAL",
        zds: str = "", msg_id: str = "", kind: str = "ORM^O01", status: str = "") -> str:
    segments = [
        f"MSH|^~\\&|RIS|HOSP|PACS|HOSP|20260301080000||{kind}|{msg_id or placer + control}|P|2.5.1",
        f"PID|1||{patient}^^^HOSP^MR||{name}||19700215|M",
        "PV1|1|O||||||1234^Welby^Marcus^^^Dr",
        f"ORC|{control}|{placer}^RIS|F{placer}^PACS||{status}",
        f"OBR|1|{placer}^RIS|F{placer}^PACS|{code}|||{when}|||||||||||{accession}|RP{placer}|"
        f"SPS{placer}|{station}|||{modality}",
    ]
    if zds:
        segments.append(f"ZDS|{zds}^100^Application^DICOM")
    return "\r".join(segments) + "\r"


def send(port: int, message: str | bytes) -> hl7.Message:
    with MLLPClient("127.0.0.1", port) as client:
        raw = client.send_message(message)
    return parse_ack(raw)


def parse_ack(raw: bytes) -> hl7.Message:
    assert raw.startswith(SB) and raw.endswith(EB + CR), raw
    return hl7.parse(raw[1:-2].decode())


def ack_code(ack: hl7.Message) -> str:
    return str(ack.extract_field("MSA", 1, 1))


def err_text(ack: hl7.Message) -> str:
    return str(ack.segment("ERR"))


@pytest.fixture
def hl7_archive(archive_factory, tmp_path: Path):
    hl7_port = free_port()
    config = tmp_path / "pacs.toml"
    config.write_text(f'hl7_port = {hl7_port}\nworklist_station_aet = "ANY01"\n')
    archive = archive_factory("--config", str(config), "--workers", "2")
    archive.hl7_port = hl7_port
    return archive


def findscu(port: int, out: Path, *keys: str) -> list[Dataset]:
    out.mkdir(exist_ok=True)
    for old in out.glob("rsp*.dcm"):
        old.unlink()
    args = [require_tool("findscu"), "-W", "-aec", "PACS", "-X", "-od", str(out)]
    for key in keys:
        args += ["-k", key]
    proc = subprocess.run([*args, "127.0.0.1", str(port)], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


STANDARD_KEYS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
    "StudyInstanceUID", "RequestedProcedureID", "RequestedProcedureDescription",
    "ReferringPhysicianName",
    "(0040,0100)[0].ScheduledStationAETitle", "(0040,0100)[0].ScheduledProcedureStepStartDate",
    "(0040,0100)[0].ScheduledProcedureStepStartTime", "(0040,0100)[0].Modality",
    "(0040,0100)[0].ScheduledProcedureStepID",
    "(0040,0100)[0].ScheduledProcedureStepDescription",
)


def pynetdicom_find(port: int, query: Dataset) -> list[Dataset]:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    found = []
    try:
        for status, identifier in assoc.send_c_find(query, ModalityWorklistInformationFind):
            assert status is not None and status.Status in (0xFF00, 0xFF01, 0x0000), status
            if identifier is not None:
                found.append(identifier)
    finally:
        assoc.release()
    return found


def sps_query(**sps: str) -> Dataset:
    query = Dataset()
    for keyword in ("PatientName", "PatientID", "AccessionNumber", "StudyInstanceUID",
                    "RequestedProcedureID", "RequestedProcedureDescription",
                    "ReferringPhysicianName"):
        setattr(query, keyword, "")
    step = Dataset()
    for keyword in ("ScheduledStationAETitle", "ScheduledProcedureStepStartDate", "Modality",
                    "ScheduledProcedureStepID", "ScheduledProcedureStepDescription",
                    "ScheduledProcedureStepStatus"):
        setattr(step, keyword, sps.get(keyword, ""))
    query.ScheduledProcedureStepSequence = [step]
    return query


def test_orders_become_worklist_items(hl7_archive, tmp_path: Path) -> None:
    port = hl7_archive.hl7_port
    uid = "1.2.826.0.1.3680043.8.498.1234567890"
    acks = [
        send(port, orm("NW", "ORD1", zds=uid)),
        send(port, orm("NW", "ORD2", patient="PAT2", name="Smith^Anna", accession="ACC2",
                       modality="MR", station="MR01", when="20260302140000",
                       code="MRKNEE^MR Knee^LOCAL")),
        send(port, orm("NW", "ORD3", patient="PAT3", name="Müller^Jörg", accession="ACC3",
                       station="", when="20260305090000")),
    ]
    assert [ack_code(a) for a in acks] == ["AA", "AA", "AA"]
    assert str(acks[0].extract_field("MSA", 1, 2)) == "ORD1NW"
    assert str(acks[0].extract_field("MSH", 1, 9, 1, 1)) == "ACK"

    rows = findscu(hl7_archive.port, tmp_path / "ct", *STANDARD_KEYS,
                   "(0040,0100)[0].Modality=CT")
    assert sorted(r.AccessionNumber for r in rows) == ["ACC1", "ACC3"]
    first = next(r for r in rows if r.AccessionNumber == "ACC1")
    assert first.StudyInstanceUID == uid
    assert first.PatientID == "PAT1" and str(first.PatientName) == "Doe^John^Q"
    assert first.PatientBirthDate == "19700215" and first.PatientSex == "M"
    assert first.RequestedProcedureID == "RPORD1"
    assert first.RequestedProcedureDescription == "CT Head w/o contrast"
    assert str(first.ReferringPhysicianName) == "Welby^Marcus^^Dr"
    step = first.ScheduledProcedureStepSequence[0]
    assert step.ScheduledStationAETitle == "CT01" and step.Modality == "CT"
    assert step.ScheduledProcedureStepStartDate == "20260301"
    assert step.ScheduledProcedureStepStartTime == "083000"
    assert step.ScheduledProcedureStepID == "SPSORD1"
    third = next(r for r in rows if r.AccessionNumber == "ACC3")
    assert third.ScheduledProcedureStepSequence[0].ScheduledStationAETitle == "ANY01"
    assert str(third.PatientName) == "Müller^Jörg"
    assert pydicom.uid.UID(third.StudyInstanceUID).is_valid  # generated at order time

    rows = findscu(hl7_archive.port, tmp_path / "mr", *STANDARD_KEYS,
                   "(0040,0100)[0].ScheduledStationAETitle=MR01")
    assert [r.AccessionNumber for r in rows] == ["ACC2"]
    rows = findscu(hl7_archive.port, tmp_path / "range", *STANDARD_KEYS,
                   "(0040,0100)[0].ScheduledProcedureStepStartDate=20260302-20260310")
    assert sorted(r.AccessionNumber for r in rows) == ["ACC2", "ACC3"]

    # pynetdicom: patient name wildcard (case-insensitive), accession, station + date range
    query = sps_query()
    query.PatientName = "smi*"
    assert [r.AccessionNumber for r in pynetdicom_find(hl7_archive.port, query)] == ["ACC2"]
    query = sps_query(ScheduledStationAETitle="CT01",
                      ScheduledProcedureStepStartDate="20260301-20260301")
    found = pynetdicom_find(hl7_archive.port, query)
    assert [r.AccessionNumber for r in found] == ["ACC1"]
    assert found[0].StudyInstanceUID == uid
    assert found[0].ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus == "SCHEDULED"
    query = sps_query()
    query.PatientID = "PAT2"
    query.AccessionNumber = "ACC2"
    assert [r.StudyInstanceUID != "" for r in pynetdicom_find(hl7_archive.port, query)] == [True]
    query = sps_query(Modality="US")
    assert pynetdicom_find(hl7_archive.port, query) == []


def test_cancel_change_and_restart(hl7_archive, tmp_path: Path) -> None:
    port = hl7_archive.hl7_port
    assert ack_code(send(port, orm("NW", "ORD1"))) == "AA"
    assert ack_code(send(port, orm("NW", "ORD2", accession="ACC2"))) == "AA"
    assert ack_code(send(port, orm("NW", "ORD3", accession="ACC3"))) == "AA"
    before = {r.AccessionNumber: r.StudyInstanceUID for r in pynetdicom_find(
        hl7_archive.port, sps_query())}
    assert set(before) == {"ACC1", "ACC2", "ACC3"}

    assert ack_code(send(port, orm("CA", "ORD1", msg_id="c1"))) == "AA"
    # XO moves ORD2 to another station and day; the StudyInstanceUID stays
    assert ack_code(send(port, orm("XO", "ORD2", accession="ACC2", station="CT02",
                                   when="20260310100000"))) == "AA"
    # SC with ORC-5 CM: the step is done and leaves the worklist
    assert ack_code(send(port, orm("SC", "ORD3", accession="ACC3", status="CM"))) == "AA"
    # cancelling an unknown order is an application error
    unknown = send(port, orm("CA", "NOPE"))
    assert ack_code(unknown) == "AE" and "204" in err_text(unknown)

    def listing() -> dict[str, Dataset]:
        return {r.AccessionNumber: r for r in pynetdicom_find(hl7_archive.port, sps_query())}

    after = listing()
    assert set(after) == {"ACC2"}
    assert after["ACC2"].StudyInstanceUID == before["ACC2"]
    step = after["ACC2"].ScheduledProcedureStepSequence[0]
    assert (step.ScheduledStationAETitle, step.ScheduledProcedureStepStartDate) == (
        "CT02", "20260310")

    hl7_archive.stop()
    hl7_archive.start()
    restarted = listing()
    assert set(restarted) == {"ACC2"}
    assert restarted["ACC2"].StudyInstanceUID == before["ACC2"]
    # a new order after the restart, and a re-sent NW revives the cancelled one
    assert ack_code(send(port, orm("NW", "ORD1", msg_id="again"))) == "AA"
    assert set(listing()) == {"ACC1", "ACC2"}
    assert listing()["ACC1"].StudyInstanceUID == before["ACC1"]


def test_negative_acks(hl7_archive) -> None:
    port = hl7_archive.hl7_port
    # unknown message type -> AR 200
    oru = orm("NW", "ORD9", kind="ORU^R01")
    ack = send(port, oru)
    assert ack_code(ack) == "AR" and "200" in err_text(ack)
    assert str(ack.extract_field("MSA", 1, 2)) == "ORD9NW"
    # a known type with an event we do not handle -> AR 201
    ack = send(port, orm("NW", "ORD9", kind="ADT^A01"))
    assert ack_code(ack) == "AR" and "201" in err_text(ack)
    # wrong event -> AR 201
    ack = send(port, orm("NW", "ORD9", kind="ORM^O02"))
    assert ack_code(ack) == "AR" and "201" in err_text(ack)
    # missing patient ID -> AE 101
    ack = send(port, orm("NW", "ORD9", patient=""))
    assert ack_code(ack) == "AE" and "101" in err_text(ack) and "PID-3" in err_text(ack)
    # missing order numbers -> AE 101
    no_orc = orm("NW", "ORD9").replace("ORC|NW|ORD9^RIS|FORD9^PACS|", "ORC|NW|||")
    ack = send(port, no_orc)
    assert ack_code(ack) == "AE" and "ORC-2" in err_text(ack)
    # bad date -> AE 102
    ack = send(port, orm("NW", "ORD9", when="tomorrow"))
    assert ack_code(ack) == "AE" and "102" in err_text(ack)
    # impossible dates and times (only the digits were counted: they reached modalities)
    for when in ("20261345083000", "2026030199"):
        ack = send(port, orm("NW", "ORD9", when=when))
        assert ack_code(ack) == "AE" and "102" in err_text(ack), when
    ack = send(port, orm("NW", "ORD9").replace("||19700215|M", "||20261399|M"))
    assert ack_code(ack) == "AE" and "PID-7" in err_text(ack)
    # unsupported order control -> AE 103
    ack = send(port, orm("ZZ", "ORD9"))
    assert ack_code(ack) == "AE" and "103" in err_text(ack)
    # not HL7 at all / a bad segment -> AR 100
    ack = send(port, "hello, this is not HL7")
    assert ack_code(ack) == "AR" and "100" in err_text(ack)
    ack = send(port, orm("NW", "ORD9") + "!!bad segment\r")
    assert ack_code(ack) == "AR" and "100" in err_text(ack)
    # none of them made an item; the listener still serves
    assert ack_code(send(port, orm("NW", "ORD10"))) == "AA"
    found = pynetdicom_find(hl7_archive.port, sps_query())
    assert [r.RequestedProcedureID for r in found] == ["RPORD10"]
    assert "HL7" in hl7_archive.log() and "not supported" in hl7_archive.log()


class Frames:
    """MLLP frames read off a socket one at a time (two ACKs may arrive in one read)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def next(self) -> bytes:
        while EB + CR not in self.buffer:
            chunk = self.sock.recv(65536)
            assert chunk, self.buffer
            self.buffer += chunk
        frame, _, self.buffer = self.buffer.partition(EB + CR)
        return frame + EB + CR


def test_bad_framing(hl7_archive) -> None:
    port = hl7_archive.hl7_port
    good = orm("NW", "ORD1").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        frames = Frames(sock)
        # a message without its start block
        sock.sendall(good + EB + CR)
        ack = parse_ack(frames.next())
        assert ack_code(ack) == "AR" and "start block" in err_text(ack)
        assert str(ack.extract_field("MSA", 1, 2)) == "ORD1NW"
        # a frame without its end block, then a good frame: one AR, then AA
        sock.sendall(SB + b"MSH|^~\\&|truncated" + SB + good + EB + CR)
        first = parse_ack(frames.next())
        assert ack_code(first) == "AR" and "end block" in err_text(first)
        second = parse_ack(frames.next())
        assert ack_code(second) == "AA"
        # garbage between frames, then a good frame in two pieces
        sock.sendall(b"garbage" + SB + good[:20])
        assert ack_code(parse_ack(frames.next())) == "AR"
        sock.sendall(good[20:] + EB + CR)
        assert ack_code(parse_ack(frames.next())) == "AA"
    # two frames in one write get two ACKs in order
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(SB + orm("NW", "ORD2").encode() + EB + CR + SB + b"junk" + EB + CR)
        frames = Frames(sock)
        assert [ack_code(parse_ack(frames.next())) for _ in range(2)] == ["AA", "AR"]
    assert "MLLP framing error" in hl7_archive.log()
    assert ack_code(send(port, orm("NW", "ORD3"))) == "AA"


# -- OMI^O23 and ADT^A08 / ADT^A40 ------------------------------------------------------------


def adt(event: str, patient: str, name: str, *, prior: str = "", birth: str = "19700215",
        sex: str = "M", msg_id: str = "") -> str:
    segments = [
        f"MSH|^~\\&|ADT|HOSP|PACS|HOSP|20260301080000||ADT^{event}|{msg_id or event + patient}"
        "|P|2.5.1",
        f"EVN|{event}|20260301080000",
        f"PID|1||{patient}^^^HOSP^MR||{name}||{birth}|{sex}",
    ]
    if prior or event == "A40":
        segments.append(f"MRG|{prior}^^^HOSP^MR")
    return "\r".join(segments) + "\r"



def test_omi_with_ipc_segment(hl7_archive) -> None:
    port = hl7_archive.hl7_port
    message = orm("NW", "OMI1", kind="OMI^O23", accession="OBRACC").rstrip("\r") + (
        "\rIPC|IPCACC|RPIPC|1.2.826.0.1.3680043.10.5|SPSIPC|MR||||MR7\r")
    ack = send(port, message)
    assert ack_code(ack) == "AA", err_text(ack) if ack_code(ack) != "AA" else ""
    (item,) = pynetdicom_find(hl7_archive.port, sps_query(ScheduledStationAETitle="MR7"))
    step = item.ScheduledProcedureStepSequence[0]
    assert (item.AccessionNumber, item.RequestedProcedureID, item.StudyInstanceUID) == (
        "IPCACC", "RPIPC", "1.2.826.0.1.3680043.10.5")
    assert (step.ScheduledProcedureStepID, step.Modality) == ("SPSIPC", "MR")
    bad = orm("NW", "OMI2", kind="OMI^O23").rstrip("\r") + "\rIPC|A|B|1.2.x|C|CT\r"
    ack = send(port, bad)
    assert ack_code(ack) == "AE" and "IPC-3" in err_text(ack)


def test_adt_updates_and_merges_pending_items(hl7_archive) -> None:
    port = hl7_archive.hl7_port
    for placer, patient, station in (("A1", "PA", "ADT1"), ("A2", "PA", "ADT1"),
                                     ("A3", "PB", "ADT1"), ("A4", "PA", "ADT2")):
        assert ack_code(send(port, orm("NW", placer, patient=patient, station=station,
                                       name="Old^Name"))) == "AA"
    # A4 is performed: the images carry the old name, its item must not change.
    assert ack_code(send(port, orm("SC", "A4", patient="PA", station="ADT2",
                                   status="CM"))) == "AA"

    def names(station: str) -> dict[str, tuple[str, str, str]]:
        query = sps_query(ScheduledStationAETitle=station)
        query.PatientBirthDate = ""
        rows = pynetdicom_find(hl7_archive.port, query)
        return {r.RequestedProcedureID: (r.PatientID, str(r.PatientName), r.PatientBirthDate)
                for r in rows}

    ack = send(port, adt("A08", "PA", "New^Name^Q", birth="19700216", sex="F"))
    assert ack_code(ack) == "AA"
    assert names("ADT1") == {"RPA1": ("PA", "New^Name^Q", "19700216"),
                             "RPA2": ("PA", "New^Name^Q", "19700216"),
                             "RPA3": ("PB", "Old^Name", "19700215")}
    assert names("ADT2") == {}  # completed: off the worklist, untouched below
    # Merge PB into PA: A3 now belongs to PA with PA's demographics.
    ack = send(port, adt("A40", "PA", "New^Name^Q", prior="PB", birth="19700216", sex="F"))
    assert ack_code(ack) == "AA"
    assert names("ADT1")["RPA3"] == ("PA", "New^Name^Q", "19700216")
    # An unknown patient changes nothing, still AA; a merge without MRG-1 is AE 101.
    assert ack_code(send(port, adt("A08", "NOBODY", "X^Y"))) == "AA"
    ack = send(port, adt("A40", "PA", "New^Name^Q", prior=""))
    assert ack_code(ack) == "AE" and "101" in err_text(ack) and "MRG-1" in err_text(ack)
    ack = send(port, adt("A08", "", "X^Y"))
    assert ack_code(ack) == "AE" and "PID-3" in err_text(ack)
    assert "ADT^A08 for patient PA: 2 worklist items updated" in hl7_archive.log()


def test_wildcards_neither_freeze_nor_overflow(hl7_archive) -> None:
    """A short '*?*?...Z' value backtracked for ~23 s as a regular expression (the worker's
    other associations waited); a wildcard value over the limit is refused (0xC000)."""
    ack = send(hl7_archive.hl7_port, orm("NW", "WILD1", code=f"X^{'A' * 34}^LOCAL"))
    assert ack_code(ack) == "AA"
    query = sps_query()
    query.RequestedProcedureDescription = "*?" * 14 + "Z"
    assert pynetdicom_find(hl7_archive.port, query) == []
    query.RequestedProcedureDescription = "*?" * 14 + "A"
    assert len(pynetdicom_find(hl7_archive.port, query)) == 1
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", hl7_archive.port, ae_title="PACS")
    assert assoc.is_established
    try:
        with warnings.catch_warnings():  # pydicom warns of the LO's length, as it should
            warnings.simplefilter("ignore", UserWarning)
            query.RequestedProcedureDescription = "*" + "A" * 2000
            statuses = [status.Status for status, _ in
                        assoc.send_c_find(query, ModalityWorklistInformationFind)]
    finally:
        assoc.release()
    assert statuses == [0xC000], statuses


def worklist_statuses(port: int, query: Dataset) -> list[int]:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    try:
        return [status.Status for status, _ in
                assoc.send_c_find(query, ModalityWorklistInformationFind)]
    finally:
        assoc.release()


@pytest.mark.parametrize("date", ["-", "2026-", "20261345", "2026*"])
def test_bad_dates_are_refused_not_matched(hl7_archive, date: str) -> None:
    """As the Q/R C-FIND does (0xC000): '-' matched every item, '20261345' none, silently."""
    assert ack_code(send(hl7_archive.hl7_port, orm("NW", "DATE1"))) == "AA"
    with warnings.catch_warnings():  # pydicom warns of the invalid DA, as it should
        warnings.simplefilter("ignore", UserWarning)
        query = sps_query(ScheduledProcedureStepStartDate=date)
        assert worklist_statuses(hl7_archive.port, query) == [0xC000]
    assert len(pynetdicom_find(hl7_archive.port, sps_query(
        ScheduledProcedureStepStartDate="20260301"))) == 1
