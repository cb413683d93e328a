"""DICOM access control with real clients: called / calling AE checks, host check, per-AE
permissions negotiated away, and the per-calling-AE association cap across worker processes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, build_role
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
    Verification,
)

from pacs.net import AssociateAccepted, AssociateRejected
from tests.conftest import require_tool
from tests.dicomgen import make_ct, write
from tests.integration.archive_check import stored_instance
from tests.netclient import Client

pytestmark = pytest.mark.integration


def dcmtk(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool(tool), *args], capture_output=True, text=True,
                          timeout=60)


def config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "pacs.toml"
    path.write_text(text)
    return str(path)


def echoscu(port: int, calling: str, called: str = "PACS") -> subprocess.CompletedProcess[str]:
    return dcmtk("echoscu", "-aet", calling, "-aec", called, "127.0.0.1", str(port))


def test_unknown_calling_ae_rejected_known_one_accepted(archive_factory, tmp_path: Path) -> None:
    archive = archive_factory("--config", config(tmp_path, """
allow_unknown_aets = false

[remote.MODALITY]
host = "127.0.0.1"
"""))
    refused = echoscu(archive.port, "STRANGER")
    assert refused.returncode != 0
    assert "Association Rejected" in refused.stderr + refused.stdout
    assert echoscu(archive.port, "MODALITY").returncode == 0
    log = archive.log()
    assert ("STRANGER -> PACS: rejected, calling AE title 'STRANGER' is not a known remote AE"
            in log)
    assert "(A-ASSOCIATE-RJ result 1, source 1, reason 3)" in log
    with Client(archive.port, calling="STRANGER") as client:
        result = client.associate()
        assert isinstance(result, AssociateRejected)
        assert (result.pdu.result, result.pdu.source, result.pdu.reason) == (1, 1, 3)


def test_wrong_called_ae_rejected(archive_factory, tmp_path: Path) -> None:
    archive = archive_factory("--config", config(tmp_path, "check_called_aet = true\n"))
    refused = echoscu(archive.port, "ECHOSCU", called="NOTPACS")
    assert refused.returncode != 0
    assert echoscu(archive.port, "ECHOSCU", called="PACS").returncode == 0
    assert "called AE title 'NOTPACS' is not ours ('PACS')" in archive.log()
    with Client(archive.port, called="NOTPACS") as client:
        result = client.associate()
        assert isinstance(result, AssociateRejected)
        assert (result.pdu.result, result.pdu.source, result.pdu.reason) == (1, 1, 7)


def test_without_the_check_any_called_ae_is_accepted(archive) -> None:
    assert echoscu(archive.port, "ECHOSCU", called="ANYTHING").returncode == 0


def test_host_check(archive_factory, tmp_path: Path) -> None:
    archive = archive_factory("--config", config(tmp_path, """
[remote.WARD]
host = "127.0.0.2"
check_host = true
"""))
    refused = echoscu(archive.port, "WARD")  # from 127.0.0.1
    assert refused.returncode != 0
    assert "calling AE title 'WARD' must connect from 127.0.0.2" in archive.log()
    assert "not 127.0.0.1" in archive.log()
    # From the configured address (loopback has all of 127/8) it gets in.
    ae = AE(ae_title="WARD")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", archive.port, ae_title="PACS",
                         bind_address=("127.0.0.2", 0))
    try:
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
    finally:
        assoc.release()
        ae.shutdown()


def test_echo_only_ae_cannot_store(archive_factory, tmp_path: Path) -> None:
    archive = archive_factory("--config", config(tmp_path, """
[remote.ECHOER]
host = "127.0.0.1"
permissions = ["echo"]
"""))
    assert echoscu(archive.port, "ECHOER").returncode == 0
    ds = make_ct()
    path = write(ds, tmp_path / "ct.dcm")
    proc = dcmtk("storescu", "-aet", "ECHOER", "-aec", "PACS", "127.0.0.1", str(archive.port),
                 str(path))
    assert proc.returncode != 0
    assert "presentation context" in (proc.stderr + proc.stdout).lower()
    assert stored_instance(archive.data_dir, ds.SOPInstanceUID) is None
    # The storage context was answered with result 1 (user rejection), echo accepted.
    ae = AE(ae_title="ECHOER")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", archive.port, ae_title="PACS")
    try:
        assert assoc.is_established
        assert [c.abstract_syntax for c in assoc.accepted_contexts] == [Verification]
        assert [c.result for c in assoc.rejected_contexts] == [1]
    finally:
        assoc.release()
        ae.shutdown()
    # Another AE still stores.
    proc = dcmtk("storescu", "-aec", "PACS", "127.0.0.1", str(archive.port), str(path))
    assert proc.returncode == 0, proc.stderr
    assert stored_instance(archive.data_dir, ds.SOPInstanceUID) is not None


def test_get_only_ae_retrieves_but_cannot_store(archive_factory, tmp_path: Path) -> None:
    archive = archive_factory("--config", config(tmp_path, """
[remote.VIEWER]
host = "127.0.0.1"
permissions = ["get"]
"""))
    ds = make_ct()
    path = write(ds, tmp_path / "ct.dcm")
    proc = dcmtk("storescu", "-aec", "PACS", "127.0.0.1", str(archive.port), str(path))
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    out.mkdir()
    proc = dcmtk("getscu", "-aet", "VIEWER", "-aec", "PACS", "-od", str(out), "-S",
                 "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={ds.StudyInstanceUID}",
                 "127.0.0.1", str(archive.port))
    assert proc.returncode == 0, proc.stderr
    received = list(out.iterdir())
    assert len(received) == 1
    assert pydicom.dcmread(received[0]).SOPInstanceUID == ds.SOPInstanceUID
    # Its storage context as plain SCU is refused; proposed for the SCP role it is accepted,
    # with our SCU-role answer false: it may receive, not send.
    other = make_ct()
    proc = dcmtk("storescu", "-aet", "VIEWER", "-aec", "PACS", "127.0.0.1", str(archive.port),
                 str(write(other, tmp_path / "other.dcm")))
    assert proc.returncode != 0
    ae = AE(ae_title="VIEWER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", archive.port, ae_title="PACS",
                         ext_neg=[build_role(CTImageStorage, scp_role=True)])
    try:
        assert assoc.is_established
        accepted = {c.abstract_syntax: c for c in assoc.accepted_contexts}
        assert set(accepted) == {StudyRootQueryRetrieveInformationModelGet, CTImageStorage}
        assert accepted[CTImageStorage].as_scp and not accepted[CTImageStorage].as_scu
    finally:
        assoc.release()
        ae.shutdown()
    assert stored_instance(archive.data_dir, other.SOPInstanceUID) is None


@pytest.mark.parametrize("workers", ["1", "2"])
def test_per_ae_association_cap(archive_factory, tmp_path: Path, workers: str) -> None:
    """With 2 workers the counts live in shared memory; with 1, in the process."""
    archive = archive_factory("--workers", workers, "--config", config(tmp_path, """
max_associations_per_ae = 3

[remote.SMALL]
host = "127.0.0.1"
max_associations = 1
"""))
    ae = AE(ae_title="BUSY")
    ae.add_requested_context(Verification)
    held = [ae.associate("127.0.0.1", archive.port, ae_title="PACS") for _ in range(3)]
    try:
        assert all(assoc.is_established for assoc in held)
        # The fourth of BUSY, whichever worker the kernel hands it to, is refused transiently.
        for _ in range(2):
            with Client(archive.port, calling="BUSY") as client:
                result = client.associate()
                assert isinstance(result, AssociateRejected)
                assert (result.pdu.result, result.pdu.source, result.pdu.reason) == (2, 3, 2)
        # Another AE still gets in; SMALL's own cap (1) overrides the global 3.
        small = Client(archive.port, calling="SMALL")
        try:
            assert isinstance(small.associate(), AssociateAccepted)
            with Client(archive.port, calling="SMALL") as second:
                result = second.associate()
                assert isinstance(result, AssociateRejected)
                assert result.pdu.reason == 2
            assert small.echo() == 0
            small.release()
        finally:
            small.close()
        held.pop().release()
        # A slot of BUSY is free again.
        with Client(archive.port, calling="BUSY") as client:
            assert isinstance(client.associate(), AssociateAccepted)
            assert client.echo() == 0
            client.release()
    finally:
        for assoc in held:
            assoc.release()
        ae.shutdown()
    log = archive.log()
    assert "BUSY -> PACS: rejected, 'BUSY' already has 3 associations open (cap 3)" in log
    assert "'SMALL' already has 1 associations open (cap 1)" in log
