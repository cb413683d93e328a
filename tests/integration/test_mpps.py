"""MPPS (N-CREATE / N-SET) from pynetdicom into a real `pacs serve`: steps update the HL7 order
they name, wrong requests get their PS3.4 F.7 statuses, and a completed order is reconciled
when its images arrive."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import ModalityPerformedProcedureStep  # type: ignore[attr-defined]

from pacs.audit import read_events
from tests.conftest import ArchiveProcess, free_port, require_tool
from tests.dicomgen import make_ct, write
from tests.integration.test_worklist import ack_code, orm, pynetdicom_find, send, sps_query

pytestmark = pytest.mark.integration


@pytest.fixture
def mpps_archive(tmp_path: Path) -> Iterator[ArchiveProcess]:
    hl7_port = free_port()
    config = tmp_path / "pacs.toml"
    config.write_text(f"hl7_port = {hl7_port}\nreconcile_quiet_period = 0.5\n")
    archive = ArchiveProcess(tmp_path / "data", free_port(),
                             extra_args=["--config", str(config), "--workers", "2"])
    archive.hl7_port = hl7_port  # type: ignore[attr-defined]
    archive.start()
    yield archive
    archive.stop()


class Modality:
    def __init__(self, port: int) -> None:
        self.ae = AE(ae_title="MODALITY1")
        self.ae.add_requested_context(ModalityPerformedProcedureStep)
        self.assoc: Association = self.ae.associate("127.0.0.1", port, ae_title="PACS")
        assert self.assoc.is_established

    def create(self, uid: str, status: str = "IN PROGRESS", study_uid: str = "",
               accession: str = "") -> int:
        ds = Dataset()
        step = Dataset()
        step.StudyInstanceUID = study_uid
        step.AccessionNumber = accession
        step.ScheduledProcedureStepID = ""
        ds.ScheduledStepAttributesSequence = [step]
        ds.PatientID = "MPPSPAT"
        ds.PerformedProcedureStepID = "PPS1"
        ds.PerformedProcedureStepStatus = status
        ds.PerformedProcedureStepStartDate = "20260301"
        ds.Modality = "CT"
        status_ds, _attrs = self.assoc.send_n_create(ds, ModalityPerformedProcedureStep, uid)
        return int(status_ds.Status)

    def set(self, uid: str, status: str) -> int:
        ds = Dataset()
        ds.PerformedProcedureStepStatus = status
        ds.PerformedProcedureStepEndDate = "20260301"
        status_ds, _attrs = self.assoc.send_n_set(ds, ModalityPerformedProcedureStep, uid)
        return int(status_ds.Status)

    def close(self) -> None:
        self.assoc.release()
        self.ae.shutdown()


def _steps(archive: ArchiveProcess, station: str) -> dict[str, str]:
    rows = pynetdicom_find(archive.port, sps_query(ScheduledStationAETitle=station))
    return {r.AccessionNumber: r.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus
            for r in rows}


def test_mpps_updates_orders_and_refuses_what_ps34_refuses(mpps_archive, tmp_path) -> None:
    archive = mpps_archive
    hl7_port = archive.hl7_port  # type: ignore[attr-defined]
    for placer, accession in (("M1", "MACC1"), ("M2", "MACC2")):
        assert ack_code(send(hl7_port, orm("NW", placer, patient="MPPSPAT",
                                           accession=accession, station="MPPS1"))) == "AA"
    (first,) = [r for r in pynetdicom_find(archive.port, sps_query(ScheduledStationAETitle="MPPS1"))
                if r.AccessionNumber == "MACC1"]
    modality = Modality(archive.port)
    try:
        done, dropped, unscheduled = generate_uid(), generate_uid(), generate_uid()
        # By StudyInstanceUID (as a modality that used the worklist sends it).
        assert modality.create(done, study_uid=first.StudyInstanceUID) == 0x0000
        assert _steps(archive, "MPPS1") == {"MACC1": "STARTED", "MACC2": "SCHEDULED"}
        # By accession only.
        assert modality.create(dropped, accession="MACC2") == 0x0000
        assert modality.set(dropped, "DISCONTINUED") == 0x0000
        assert modality.set(done, "COMPLETED") == 0x0000
        assert _steps(archive, "MPPS1") == {}  # both left the worklist
        # What PS3.4 F.7 refuses.
        assert modality.set(done, "IN PROGRESS") == 0x0110  # final: no longer updatable
        assert modality.set(generate_uid(), "COMPLETED") == 0x0112  # unknown instance
        assert modality.create(done) == 0x0111  # duplicate
        assert modality.create(generate_uid(), status="COMPLETED") == 0x0106
        assert modality.set(unscheduled, "BOGUS") == 0x0106
        # An unscheduled exam (no order) is accepted and changes no order.
        assert modality.create(unscheduled, accession="NOORDER") == 0x0000
        assert modality.set(unscheduled, "COMPLETED") == 0x0000
    finally:
        modality.close()
    assert "MPPS N-SET" in archive.log() and "refused" in archive.log()
    # The MPPS-completed order meets its images: reconciliation records it once.
    ds = make_ct(patient_id="MPPSPAT", study_uid=first.StudyInstanceUID)
    ds.AccessionNumber = "MACC1"
    proc = subprocess.run([require_tool("storescu"), "-aec", "PACS", "127.0.0.1",
                           str(archive.port), str(write(ds, tmp_path / "a.dcm"))],
                          capture_output=True, text=True, env={"TCP_NODELAY": "1"})
    assert proc.returncode == 0, proc.stderr
    deadline = time.monotonic() + 20
    reconciled: list[dict[str, str]] = []
    while not reconciled and time.monotonic() < deadline:
        time.sleep(0.2)
        reconciled = [e for e in read_events(archive.data_dir / "audit")
                      if e["action"] == "order" and e["user"] == "reconcile"]
    assert [e["study_uid"] for e in reconciled] == [first.StudyInstanceUID]
    mpps_events = [e for e in read_events(archive.data_dir / "audit")
                   if e["action"] == "order" and e.get("mpps") == done]
    assert [e["status"] for e in mpps_events] == ["IN PROGRESS", "COMPLETED"]
