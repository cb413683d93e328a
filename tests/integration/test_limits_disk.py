"""Limits that protect the disk: the free-space watermark (stores refused with 0xA700, nothing
damaged, stores resume when space comes back) and max_dataset_size (refused, association goes
on)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from tests.conftest import REPO, free_port, require_tool
from tests.dicomgen import make_ct, write
from tests.integration.archive_check import read_blob, same_dataset, stored_instance

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
OUT_OF_RESOURCES = 0xA700
# The cached free-space answer lives 0.5 s; wait past it after changing the free space.
CACHE_SECONDS = 1.0


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def storescu(port: int, *files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool("storescu"), "-v", "-aec", "PACS", "127.0.0.1",
                           str(port), *map(str, files)], capture_output=True, text=True,
                          timeout=60)


def stow_body(ds: Dataset, tmp: Path) -> tuple[bytes, str]:
    data = write(ds, tmp / f"{ds.SOPInstanceUID}.dcm").read_bytes()
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data
            + f"\r\n--{boundary}--\r\n".encode())
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def wait_http(base: str) -> None:
    for _ in range(400):
        try:
            if httpx.get(f"{base}/system", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError("HTTP did not come up")


def assert_intact(data_dir: Path, datasets: list[Dataset]) -> None:
    for ds in datasets:
        found = stored_instance(data_dir, ds.SOPInstanceUID)
        assert found is not None, ds.SOPInstanceUID
        assert same_dataset(read_blob(found[1]), ds)


def test_stores_refused_below_the_watermark_and_resume(archive_factory, tmp_path: Path) -> None:
    # The watermark sits 1 GiB under today's free space; a 2 GiB filler crosses it. Other
    # programs on the machine move free space by far less than the margins meanwhile.
    watermark = free_bytes(tmp_path) - 1024 * MiB
    assert watermark > 0
    http_port = free_port()
    archive = archive_factory("--http-port", str(http_port),
                              env={"PACS_MIN_FREE_SPACE": str(watermark)})
    base = f"http://127.0.0.1:{http_port}"
    wait_http(base)
    earlier = [make_ct(instance_number=i) for i in range(3)]
    proc = storescu(archive.port, *(write(ds, tmp_path / f"e{i}.dcm")
                                    for i, ds in enumerate(earlier)))
    assert proc.returncode == 0, proc.stderr

    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    filler = tmp_path / "filler"
    assoc = ae.associate("127.0.0.1", archive.port, ae_title="PACS")
    try:
        assert assoc.is_established
        with open(filler, "wb") as fh:
            os.posix_fallocate(fh.fileno(), 0, 2048 * MiB)
        assert free_bytes(tmp_path) < watermark
        time.sleep(CACHE_SECONDS)
        refused = make_ct()
        status = assoc.send_c_store(write(refused, tmp_path / "refused.dcm"))
        assert status.Status == OUT_OF_RESOURCES
        assert status.ErrorComment == "disk below the free-space watermark"
        # dcmtk's storescu sees the same refusal.
        proc = storescu(archive.port, tmp_path / "refused.dcm")
        assert "Received Store Response (Refused: OutOfResources)" in proc.stderr
        # STOW-RS: the whole request is refused with 507, before its body is read.
        body, content_type = stow_body(refused, tmp_path)
        response = httpx.post(f"{base}/dicom-web/studies", content=body,
                              headers={"Content-Type": content_type}, timeout=30)
        assert response.status_code == 507
        assert "watermark" in response.text
        assert stored_instance(archive.data_dir, refused.SOPInstanceUID) is None
        assert_intact(archive.data_dir, earlier)

        filler.unlink()
        time.sleep(CACHE_SECONDS)
        # Space is back: the same association stores again, no restart.
        resumed = make_ct()
        status = assoc.send_c_store(write(resumed, tmp_path / "resumed.dcm"))
        assert status.Status == 0
    finally:
        filler.unlink(missing_ok=True)
        assoc.release()
        ae.shutdown()
    response = httpx.post(f"{base}/dicom-web/studies", content=body,
                          headers={"Content-Type": content_type}, timeout=30)
    assert response.status_code == 200
    assert_intact(archive.data_dir, [*earlier, resumed, refused])
    log = archive.log()
    assert "refused: 0xA700 disk below the free-space watermark" in log
    assert "STOW-RS from" in log and "refused: disk below the free-space watermark" in log
    assert "free space back above the watermark" in log
    assert archive.stop() == 0
    verify = subprocess.run([sys.executable, "-m", "pacs", "verify", "--data-dir",
                             str(archive.data_dir)], capture_output=True, text=True,
                            timeout=120, cwd=REPO)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_data_set_over_max_dataset_size_refused_association_goes_on(
    archive_factory, tmp_path: Path
) -> None:
    # Small spool memory: the refused data set had started spooling to a file.
    archive = archive_factory(env={"PACS_MAX_DATASET_SIZE": str(64 * 1024),
                                   "PACS_SPOOL_MEMORY_LIMIT": str(16 * 1024)})
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    big = make_ct(rows=320, columns=320)  # 200 KiB of pixels
    small = make_ct()
    assoc = ae.associate("127.0.0.1", archive.port, ae_title="PACS", max_pdu=16384)
    try:
        assert assoc.is_established
        status = assoc.send_c_store(write(big, tmp_path / "big.dcm"))
        assert status.Status == OUT_OF_RESOURCES
        assert "max_dataset_size" in status.ErrorComment
        status = assoc.send_c_store(write(small, tmp_path / "small.dcm"))
        assert status.Status == 0
    finally:
        assoc.release()
        ae.shutdown()
    assert stored_instance(archive.data_dir, big.SOPInstanceUID) is None
    assert_intact(archive.data_dir, [small])
    assert not [p for p in (archive.data_dir / "spool").rglob("*") if p.is_file()]
    assert "data set larger than max_dataset_size (65536 bytes)" in archive.log()


def test_import_refuses_to_start_below_the_watermark(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    datasets = [make_ct(instance_number=i) for i in range(3)]
    for i, ds in enumerate(datasets):
        write(ds, source / f"{i}.dcm")
    data = tmp_path / "data"

    def pacs_import(min_free: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pacs", "import", "--data-dir", str(data), "--report",
             str(tmp_path / "report.txt"), str(source)], capture_output=True, text=True,
            timeout=120, cwd=REPO, env=dict(os.environ, PACS_MIN_FREE_SPACE=str(min_free)))

    refused = pacs_import(1 << 50)  # more than any disk here has
    assert refused.returncode == 2
    assert "pacs: error: disk below the free-space watermark" in refused.stderr
    assert not (data / "index").exists()  # nothing opened, nothing written
    done = pacs_import(1)
    assert done.returncode == 0, done.stderr
    assert_intact(data, datasets)
