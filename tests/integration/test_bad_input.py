"""Bad input on the wire: each case gets a clear answer or an abort, the archive keeps serving,
and what it stored before is intact."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import xxhash
from pydicom.uid import generate_uid

from pacs.dicom import uids
from pacs.net import AssociateAccepted, AssociateRejected, Association, Role, propose
from tests.dicomgen import dataset_bytes, make_ct
from tests.integration.archive_check import open_blob_store, statistics, stored_instance
from tests.netclient import Client

pytestmark = pytest.mark.integration


@pytest.fixture
def seeded(archive) -> Iterator[tuple[object, dict[str, str]]]:
    """An archive holding three instances, with their digests."""
    digests = {}
    with Client(archive.port) as client:
        client.associate()
        for i in range(3):
            ds = make_ct(instance_number=i)
            rsp = client.store(dataset_bytes(ds), ds.SOPInstanceUID)
            assert rsp.status == 0
            record, _ = stored_instance(archive.data_dir, ds.SOPInstanceUID)
            digests[ds.SOPInstanceUID] = record.digest
        client.release()
    yield archive, digests


def assert_still_serving(archive, digests: dict[str, str]) -> None:
    assert archive.alive(), archive.log()
    with Client(archive.port) as client:
        assert isinstance(client.associate(), AssociateAccepted)
        assert client.echo() == 0
        client.release()
    for uid, digest in digests.items():
        found = stored_instance(archive.data_dir, uid)
        assert found is not None, uid
        record, blob = found
        assert "x3:" + xxhash.xxh3_128(blob).hexdigest() == digest == record.digest
    assert not [p for p in (archive.data_dir / "spool").rglob("*") if p.is_file()]


def live_blobs(data_dir) -> set[str]:
    store = open_blob_store(data_dir)
    try:
        return set(store.locations())
    finally:
        store.close()


def raw_exchange(port: int, data: bytes, *, close_after_send: bool = False) -> bytes:
    """Send bytes on a fresh connection; return what the archive answered before closing."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        if close_after_send:
            return b""
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
        return received


def associate_rq_bytes(max_pdu: int = 16384) -> bytes:
    rq = propose("PACS", "RAW", [(uids.VERIFICATION, (uids.IMPLICIT_VR_LITTLE_ENDIAN,))],
                 max_pdu_length=max_pdu)
    return Association(Role.REQUESTOR).send_associate_rq(rq)


def test_garbage_bytes(seeded) -> None:
    archive, digests = seeded
    answer = raw_exchange(archive.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + os.urandom(200))
    assert answer == b"" or answer[0] == 0x07  # closed, or an A-ABORT first
    assert_still_serving(archive, digests)


def test_associate_rq_announcing_4gb_pdu(seeded) -> None:
    archive, digests = seeded
    answer = raw_exchange(archive.port, b"\x01\x00" + struct.pack(">I", 0xFFFFFFFF) + b"\0" * 64)
    assert answer == b"" or answer[0] == 0x07
    assert_still_serving(archive, digests)


def test_max_length_sub_item_of_4gb_is_capped(seeded) -> None:
    archive, digests = seeded
    with Client(archive.port, announce_max_pdu=0xFFFFFFFF) as client:
        assert isinstance(client.associate(), AssociateAccepted)
        ds = make_ct(rows=512, columns=512)  # 512 KiB of pixels
        assert client.store(dataset_bytes(ds), ds.SOPInstanceUID).status == 0
        client.release()
    assert_still_serving(archive, digests)


def test_unknown_pdu_type(seeded) -> None:
    archive, digests = seeded
    answer = raw_exchange(archive.port, b"\x09\x00\x00\x00\x00\x04abcd")
    assert answer == b"" or answer[0] == 0x07
    assert_still_serving(archive, digests)
    assert "abort" in archive.log().lower()


def test_truncated_pdu_then_close(seeded) -> None:
    archive, digests = seeded
    rq = associate_rq_bytes()
    raw_exchange(archive.port, rq[: len(rq) // 2], close_after_send=True)
    assert_still_serving(archive, digests)


def test_unknown_called_ae_still_negotiates_contexts(seeded) -> None:
    archive, digests = seeded
    with Client(archive.port, called="ANY-SCP") as client:
        assert isinstance(client.associate(), AssociateAccepted)
        assert client.echo() == 0
        client.release()
    assert_still_serving(archive, digests)


def store_expecting_failure(archive, dataset: bytes, uid: str) -> tuple[int, str]:
    with Client(archive.port) as client:
        client.associate()
        rsp = client.store(dataset, uid)
        client.release()
    assert rsp.status is not None and rsp.status != 0
    comment = rsp.get(0x00000902, "")
    assert isinstance(comment, str) and comment
    return rsp.status, comment


def test_truncated_dataset(seeded) -> None:
    archive, digests = seeded
    ds = make_ct()
    data = dataset_bytes(ds)
    status, _comment = store_expecting_failure(archive, data[: len(data) - 1000],
                                               ds.SOPInstanceUID)
    assert status & 0xF000 == 0xC000
    assert stored_instance(archive.data_dir, ds.SOPInstanceUID) is None
    assert_still_serving(archive, digests)


def test_element_length_beyond_end(seeded) -> None:
    archive, digests = seeded
    ds = make_ct()
    data = bytearray(dataset_bytes(ds))
    # StudyDescription (0008,1030) LO: make its 2-byte length claim far more than is there.
    at = data.index(b"\x08\x00\x30\x10LO")
    data[at + 6 : at + 8] = struct.pack("<H", 0xFFF0)
    status, _ = store_expecting_failure(archive, bytes(data), ds.SOPInstanceUID)
    assert status & 0xF000 == 0xC000
    assert stored_instance(archive.data_dir, ds.SOPInstanceUID) is None
    assert_still_serving(archive, digests)


def test_dataset_without_sop_instance_uid(seeded) -> None:
    archive, digests = seeded
    ds = make_ct()
    uid = ds.SOPInstanceUID
    del ds.SOPInstanceUID
    status, comment = store_expecting_failure(archive, dataset_bytes(ds), uid)
    assert status == 0xA900
    assert "SOPInstanceUID" in comment
    assert_still_serving(archive, digests)


def test_mismatched_sop_instance_uid(seeded) -> None:
    archive, digests = seeded
    ds = make_ct()
    other = generate_uid()
    status, comment = store_expecting_failure(archive, dataset_bytes(ds), other)
    assert status == 0xA900
    assert "differs" in comment
    assert stored_instance(archive.data_dir, ds.SOPInstanceUID) is None
    assert stored_instance(archive.data_dir, other) is None
    assert_still_serving(archive, digests)


def test_disconnect_in_the_middle_of_a_store(seeded) -> None:
    archive, digests = seeded
    before = statistics(archive.data_dir)
    blobs_before = live_blobs(archive.data_dir)
    ds = make_ct(rows=256, columns=256)
    data = dataset_bytes(ds)
    client = Client(archive.port)
    client.associate()
    client.send_store(data[: len(data) // 2], ds.SOPInstanceUID, last=False)
    client.sock.close()
    deadline = time.monotonic() + 10
    while "incomplete data set dropped" not in archive.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "incomplete data set dropped" in archive.log()
    assert stored_instance(archive.data_dir, ds.SOPInstanceUID) is None
    assert statistics(archive.data_dir) == before
    assert live_blobs(archive.data_dir) == blobs_before
    assert_still_serving(archive, digests)


def test_200_associations_in_quick_succession(seeded) -> None:
    archive, digests = seeded

    def one(_: int) -> bool:
        with Client(archive.port) as client:
            result = client.associate()
            if isinstance(result, AssociateRejected):
                return False
            ok = client.echo() == 0
            client.release()
            return ok

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, range(200)))
    assert all(results)
    assert_still_serving(archive, digests)


def test_stalled_associations_do_not_delay_others_and_are_dropped(seeded) -> None:
    archive, digests = seeded
    silent = [socket.create_connection(("127.0.0.1", archive.port)) for _ in range(20)]
    # 20 more associate properly and then go quiet: the idle timeout must drop them.
    quiet = []
    for _ in range(10):
        client = Client(archive.port)
        assert isinstance(client.associate(), AssociateAccepted)
        quiet.append(client)
    trickling = [socket.create_connection(("127.0.0.1", archive.port)) for _ in range(20)]
    rq = associate_rq_bytes()
    stop = threading.Event()

    def trickle() -> None:
        for i in range(len(rq)):
            for sock in trickling:
                try:
                    sock.send(rq[i : i + 1])
                except OSError:
                    pass
            if stop.wait(1.0):
                return

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        # A normal client is served while 50 connections stall.
        with Client(archive.port, timeout=5) as client:
            assert isinstance(client.associate(), AssociateAccepted)
            assert client.echo() == 0
            ds = make_ct()
            assert client.store(dataset_bytes(ds), ds.SOPInstanceUID).status == 0
            client.release()
        # ARTIM (2 s) drops the silent and trickling ones, the idle timeout (3 s) the quiet.
        for sock in silent + trickling + [c.sock for c in quiet]:
            sock.settimeout(15)
            try:
                while sock.recv(4096):
                    pass
            except ConnectionResetError:
                pass
    finally:
        stop.set()
        thread.join()
        for sock in silent + trickling:
            sock.close()
        for client in quiet:
            client.close()
    assert "ARTIM timer expired" in archive.log()
    assert "idle for" in archive.log()
    assert_still_serving(archive, digests)
