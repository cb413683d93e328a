"""pacs.server.scu against dcmtk's storescp: what arrives equals what was stored; conversion
when the destination refuses the stored syntax; failures counted, never a hang."""

from __future__ import annotations

import asyncio
import io
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from pacs.dicom import uids
from pacs.dicom.part10 import file_meta, read_file_meta
from pacs.net import Association, Role, negotiate
from pacs.server.scu import (
    STATUS_CONNECTION_FAILED,
    STATUS_UNABLE_TO_PROCESS,
    AssociationRejected,
    SCUError,
    StoreSCU,
    send_instances,
)
from pacs.store.segments import SegmentStore
from tests.conftest import free_port
from tests.dicomgen import make_ct, write
from tests.integration.archive_check import same_dataset
from tests.integration.peers import AET, StoreSCP

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::UserWarning")]

CT = "1.2.840.10008.5.1.4.1.1.2"




@pytest.fixture
def store(tmp_path: Path) -> Iterator[SegmentStore]:
    blobs = SegmentStore(tmp_path / "blobs")
    yield blobs
    blobs.close()


def put_file(store: SegmentStore, path: Path) -> tuple[str, str, str, str]:
    data = path.read_bytes()
    meta, _ = read_file_meta(data)
    info = store.put(meta["MediaStorageSOPInstanceUID"], [data])
    return (info.location, meta["MediaStorageSOPClassUID"], meta["MediaStorageSOPInstanceUID"],
            meta["TransferSyntaxUID"])


def put_cts(store: SegmentStore, tmp_path: Path, count: int,
            ts: str = uids.EXPLICIT_VR_LITTLE_ENDIAN,
            rows: int = 64) -> list[tuple[str, str, str, str]]:
    return [put_file(store, write(make_ct(instance_number=i, rows=rows, columns=rows),
                                  tmp_path / f"ct{i}.dcm", ts))
            for i in range(count)]


def check_received(scp: StoreSCP, store: SegmentStore, items) -> None:
    received = scp.received()
    for location, _, sop_uid, _ in items:
        original = pydicom.dcmread(io.BytesIO(store.get(location)))
        assert same_dataset(received[sop_uid], original), sop_uid


def run(coro, limit: float = 30):
    return asyncio.run(asyncio.wait_for(coro, limit))


def test_send_stored_syntax_and_move_originator(scp_factory, store, tmp_path) -> None:
    scp = scp_factory("+xa")
    items = put_cts(store, tmp_path, 3, uids.IMPLICIT_VR_LITTLE_ENDIAN)
    results = []
    counts = run(send_instances(store, items, scp.dest, "PACS",
                                on_result=lambda *r: results.append(r),
                                move_originator_aet="MOVER", move_originator_message_id=7))
    assert (counts.completed, counts.failed, counts.warning) == (3, 0, 0)
    assert sorted(r[0] for r in results) == sorted(i[2] for i in items)
    assert all(r[1] == 0 for r in results)
    check_received(scp, store, items)
    for ds in scp.received().values():
        assert ds.file_meta.TransferSyntaxUID == uids.IMPLICIT_VR_LITTLE_ENDIAN  # as stored
    log = scp.output()
    assert "Move Originator AE Title      : MOVER" in log
    assert "Move Originator ID            : 7" in log


def test_implicit_only_destination_converts(scp_factory, store, tmp_path) -> None:
    scp = scp_factory("+xi")
    items = put_cts(store, tmp_path, 3, uids.EXPLICIT_VR_LITTLE_ENDIAN)
    items += [put_file(store, write(make_ct(instance_number=9), tmp_path / "be.dcm",
                                    uids.EXPLICIT_VR_BIG_ENDIAN))]
    items += [put_file(store, write(make_ct(instance_number=8), tmp_path / "dfl.dcm",
                                    uids.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN))]
    counts = run(send_instances(store, items, scp.dest, "PACS"))
    assert (counts.completed, counts.failed) == (5, 0)
    received = scp.received()
    for location, _, sop_uid, ts in items:
        got = received[sop_uid]
        assert got.file_meta.TransferSyntaxUID == uids.IMPLICIT_VR_LITTLE_ENDIAN
        original = pydicom.dcmread(io.BytesIO(store.get(location)))
        if ts == uids.EXPLICIT_VR_BIG_ENDIAN:
            assert np.array_equal(got.pixel_array, original.pixel_array)
            assert got.PatientName == original.PatientName
        else:
            assert same_dataset(got, original), sop_uid


COMPRESSED = ["SC_rgb_jpeg_dcmtk.dcm", "MR_small_jpeg_ls_lossless.dcm",
              "MR_small_jp2klossless.dcm", "MR_small_RLE.dcm", "JPGExtended.dcm"]


def test_compressed_to_uncompressed_destination(scp_factory, store, tmp_path) -> None:
    scp = scp_factory()  # default: uncompressed syntaxes only
    items = [put_file(store, Path(get_testdata_file(name))) for name in COMPRESSED]
    # a syntax nobody decodes here: fails, the rest go on
    ct = make_ct(instance_number=5)
    mpeg = write(ct, tmp_path / "m.dcm", uids.EXPLICIT_VR_LITTLE_ENDIAN).read_bytes()
    _, offset = read_file_meta(mpeg)
    fake = file_meta(ct.SOPClassUID, ct.SOPInstanceUID, "1.2.840.10008.1.2.4.100") + mpeg[offset:]
    items.append((store.put(ct.SOPInstanceUID, [fake]).location, ct.SOPClassUID,
                  ct.SOPInstanceUID, "1.2.840.10008.1.2.4.100"))
    results = {}
    counts = run(send_instances(store, items, scp.dest, "PACS",
                                on_result=lambda uid, st, c: results.__setitem__(uid, (st, c))))
    assert (counts.completed, counts.failed) == (len(COMPRESSED), 1)
    assert counts.failed_uids == [ct.SOPInstanceUID]
    assert results[ct.SOPInstanceUID][0] == STATUS_UNABLE_TO_PROCESS
    received = scp.received()
    for name in COMPRESSED:
        original = pydicom.dcmread(get_testdata_file(name))
        got = received[original.SOPInstanceUID]
        assert got.file_meta.TransferSyntaxUID in (uids.EXPLICIT_VR_LITTLE_ENDIAN,
                                                   uids.IMPLICIT_VR_LITTLE_ENDIAN)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert np.array_equal(got.pixel_array, original.pixel_array), name


def test_nothing_listening_fails_fast(store, tmp_path) -> None:
    items = put_cts(store, tmp_path, 4)
    results = []
    started = time.monotonic()
    counts = run(send_instances(store, items, ("127.0.0.1", free_port(), AET), "PACS",
                                associations=2, on_result=lambda *r: results.append(r)))
    assert time.monotonic() - started < 3
    assert (counts.completed, counts.failed) == (0, 4)
    assert {r[1] for r in results} == {STATUS_CONNECTION_FAILED}
    assert len(results) == 4


def test_destination_killed_mid_transfer(scp_factory, store, tmp_path) -> None:
    scp = scp_factory("--fork", "+xa")
    items = put_cts(store, tmp_path, 40, rows=512)  # 0.5 MB each
    done = []

    def on_result(uid, status, comment):
        done.append(status)
        if len(done) == 5:
            scp.kill()

    started = time.monotonic()
    counts = run(send_instances(store, items, scp.dest, "PACS", associations=2,
                                on_result=on_result, timeout=5, connect_timeout=2), limit=20)
    assert time.monotonic() - started < 10
    assert counts.total == 40
    assert counts.completed >= 5 and counts.failed >= 1
    assert counts.completed + counts.failed == 40


def test_two_parallel_associations(scp_factory, store, tmp_path) -> None:
    scp = scp_factory("--fork", "+xa")
    items = put_cts(store, tmp_path, 12)
    counts = run(send_instances(store, items, scp.dest, "PACS", associations=2))
    assert (counts.completed, counts.failed) == (12, 0)
    check_received(scp, store, items)
    assert scp.output().count("Association Received") >= 2


def test_store_scu_api(scp_factory, tmp_path) -> None:
    scp = scp_factory("+xa")
    path = write(make_ct(), tmp_path / "a.dcm", uids.EXPLICIT_VR_LITTLE_ENDIAN)
    data = path.read_bytes()
    meta, offset = read_file_meta(data)

    async def go() -> tuple[int, int, tuple[int, str | None]]:
        scu = await StoreSCU.connect(
            "127.0.0.1", scp.port, calling_aet="PACS", called_aet=AET,
            contexts=[(uids.VERIFICATION, [uids.IMPLICIT_VR_LITTLE_ENDIAN]),
                      (CT, [uids.EXPLICIT_VR_LITTLE_ENDIAN])], max_pdu=16384)
        assert scu.accepted == {uids.VERIFICATION: [uids.IMPLICIT_VR_LITTLE_ENDIAN],
                                CT: [uids.EXPLICIT_VR_LITTLE_ENDIAN]}
        echo = await scu.echo()
        # many small chunks: streamed as they come
        body = data[offset:]
        chunks = [body[i : i + 1000] for i in range(0, len(body), 1000)]
        result = await scu.store(CT, meta["MediaStorageSOPInstanceUID"], chunks,
                                 uids.EXPLICIT_VR_LITTLE_ENDIAN)
        await scu.release()
        return echo, len(chunks), result

    echo, _, (status, comment) = run(go())
    assert echo == 0 and status == 0 and comment is None
    assert same_dataset(next(iter(scp.received().values())), pydicom.dcmread(path))


def test_rejected_and_stalled_peers(tmp_path) -> None:
    opened: list[asyncio.BaseTransport] = []

    async def go() -> None:
        # A peer that rejects every association.
        class Rejecting(asyncio.Protocol):
            def connection_made(self, transport):
                opened.append(transport)
                self.transport = transport
                self.assoc = Association(Role.ACCEPTOR)

            def data_received(self, data):
                self.assoc.receive_data(data)
                if self.assoc.next_event() is not None:
                    self.transport.write(self.assoc.reject(1, 1, 7))

        # A peer that accepts, then never reads again.
        class Stalling(asyncio.Protocol):
            def connection_made(self, transport):
                opened.append(transport)
                self.transport = transport
                self.assoc = Association(Role.ACCEPTOR)

            def data_received(self, data):
                self.assoc.receive_data(data)
                event = self.assoc.next_event()
                if event is not None and hasattr(event, "pdu"):
                    ac = negotiate(event.pdu, {CT: [uids.EXPLICIT_VR_LITTLE_ENDIAN]})
                    self.transport.write(self.assoc.accept(ac))
                    self.transport.pause_reading()

        # A peer that accepts the TCP connection and says nothing.
        class Silent(asyncio.Protocol):
            def connection_made(self, transport):
                opened.append(transport)

        loop = asyncio.get_running_loop()
        servers = [await loop.create_server(p, "127.0.0.1", 0)
                   for p in (Rejecting, Stalling, Silent)]
        rej, stall, silent = (s.sockets[0].getsockname()[1] for s in servers)
        contexts = [(CT, [uids.EXPLICIT_VR_LITTLE_ENDIAN])]
        with pytest.raises(AssociationRejected):
            await StoreSCU.connect("127.0.0.1", rej, calling_aet="A", called_aet="B",
                                   contexts=contexts)
        t0 = loop.time()
        with pytest.raises(SCUError, match="no A-ASSOCIATE response"):
            await StoreSCU.connect("127.0.0.1", silent, calling_aet="A", called_aet="B",
                                   contexts=contexts, timeout=0.5)
        assert loop.time() - t0 < 2
        scu = await StoreSCU.connect("127.0.0.1", stall, calling_aet="A", called_aet="B",
                                     contexts=contexts)
        big = bytes(64 << 20)  # far more than the socket buffers hold
        t0 = loop.time()
        with pytest.raises(SCUError, match="stalled"):
            await scu.store(CT, "1.2.3", [big[i : i + (1 << 20)] for i in range(0, len(big),
                                                                               1 << 20)],
                            uids.EXPLICIT_VR_LITTLE_ENDIAN, timeout=0.5)
        assert loop.time() - t0 < 3
        assert not scu.is_usable
        for transport in opened:
            transport.close()
        for server in servers:
            server.close()
            await server.wait_closed()
        await asyncio.sleep(0.05)

    run(go())
