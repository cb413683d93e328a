"""The contract every BlobStore passes. A new store joins by one line in STORE_FACTORIES."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import xxhash

from pacs.errors import BlobNotFound, StorageError
from pacs.store.base import BlobPart, BlobStore
from pacs.store.export import export
from pacs.store.files import FileStore
from pacs.store.segments import SegmentStore

# name -> factory(root folder) of a store; calling it again on the same root reopens the store.
STORE_FACTORIES: dict[str, Callable[[Path], BlobStore]] = {
    "file": FileStore,
    "segment": SegmentStore,
    # Tiny segments: every few puts roll over, so the suite also crosses segment boundaries.
    "segment-small": lambda root: SegmentStore(root, segment_size=4096),
}


@pytest.fixture(params=sorted(STORE_FACTORIES))
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], BlobStore]]:
    """Opens (or reopens) the store under test on one root folder; closes all at teardown."""
    factory = STORE_FACTORIES[request.param]
    opened: list[BlobStore] = []

    def open_() -> BlobStore:
        store = factory(tmp_path / "store")
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: Callable[[], BlobStore]) -> BlobStore:
    return open_store()


def content_digest(data: bytes) -> str:
    """The digest new blobs must carry: XXH3-128, tagged (computed here without pacs)."""
    return "x3:" + xxhash.xxh3_128(data).hexdigest()


def spool(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


PAYLOAD = bytes(range(256)) * 40  # 10,240 bytes, every byte value


def test_put_bytes(store: BlobStore) -> None:
    info = store.put("1.2.3", [PAYLOAD])
    assert info.size == len(PAYLOAD)
    assert info.digest == content_digest(PAYLOAD)
    assert store.get(info.location) == PAYLOAD
    assert store.size(info.location) == len(PAYLOAD)


def test_put_memoryview_and_bytearray(store: BlobStore) -> None:
    info = store.put("1.2.4", [memoryview(PAYLOAD)[10:20], bytearray(b"abc")])
    assert store.get(info.location) == PAYLOAD[10:20] + b"abc"
    assert info.digest == content_digest(PAYLOAD[10:20] + b"abc")


def test_put_path_parts(store: BlobStore, tmp_path: Path) -> None:
    big = bytes(range(251)) * 12_000  # ~3 MiB: more than one copy / digest chunk
    info = store.put("1.2.5", [spool(tmp_path, "a", big), spool(tmp_path, "b", b"tail")])
    assert info.size == len(big) + 4
    assert info.digest == content_digest(big + b"tail")
    assert store.get(info.location) == big + b"tail"


def test_put_mixed_parts(store: BlobStore, tmp_path: Path) -> None:
    parts: list[BlobPart] = [
        b"DICM",
        spool(tmp_path, "mid", PAYLOAD),
        memoryview(b"xyz"),
        spool(tmp_path, "e", b""),
    ]
    info = store.put("1.2.6", parts)
    expected = b"DICM" + PAYLOAD + b"xyz"
    assert store.get(info.location) == expected
    assert (info.size, info.digest) == (len(expected), content_digest(expected))


def test_put_empty(store: BlobStore) -> None:
    info = store.put("1.2.7", [])
    assert (info.size, store.get(info.location), store.size(info.location)) == (0, b"", 0)


@pytest.mark.parametrize(
    ("offset", "length", "expected"),
    [
        (0, None, PAYLOAD),
        (0, 1, PAYLOAD[:1]),
        (0, 0, b""),
        (100, 50, PAYLOAD[100:150]),
        (len(PAYLOAD) - 3, 10, PAYLOAD[-3:]),  # runs past the end: short read
        (len(PAYLOAD) - 1, None, PAYLOAD[-1:]),
        (len(PAYLOAD), None, b""),
        (len(PAYLOAD) + 5, 10, b""),
    ],
)
def test_ranged_get(store: BlobStore, offset: int, length: int | None, expected: bytes) -> None:
    info = store.put("1.2.8", [PAYLOAD])
    assert store.get(info.location, offset, length) == expected


def test_iter_chunks(store: BlobStore) -> None:
    info = store.put("1.2.9", [PAYLOAD])
    chunks = list(store.iter_chunks(info.location, chunk_size=1000))
    assert b"".join(chunks) == PAYLOAD
    assert all(len(c) <= 1000 for c in chunks) and len(chunks) == 11


def test_delete(store: BlobStore) -> None:
    info = store.put("1.2.10", [PAYLOAD])
    store.delete(info.location)
    with pytest.raises(BlobNotFound):
        store.get(info.location)
    with pytest.raises(BlobNotFound):
        store.size(info.location)
    with pytest.raises(BlobNotFound):
        store.iter_chunks(info.location)
    with pytest.raises(BlobNotFound):
        store.delete(info.location)
    assert list(store.locations()) == []


def test_missing_locations(store: BlobStore) -> None:
    info = store.put("1.2.11", [b"x"])
    for bogus in ("", "nope", "../../etc/passwd", info.location + "x", "/" + info.location):
        with pytest.raises(BlobNotFound):
            store.get(bogus)
        with pytest.raises(BlobNotFound):
            store.delete(bogus)
    assert store.get(info.location) == b"x"


def test_same_key_twice_keeps_both(store: BlobStore) -> None:
    first = store.put("1.2.12", [b"first"])
    second = store.put("1.2.12", [b"second"])
    assert first.location != second.location
    assert store.get(first.location) == b"first"
    assert store.get(second.location) == b"second"


def test_locations_lists_live_blobs(store: BlobStore) -> None:
    infos = [store.put(f"1.3.{i}", [bytes([i]) * (i + 1)]) for i in range(20)]
    for info in infos[::3]:
        store.delete(info.location)
    assert sorted(store.locations()) == sorted(i.location for i in infos if i not in infos[::3])


def test_reopen_finds_blobs(open_store: Callable[[], BlobStore]) -> None:
    store = open_store()
    infos = {store.put(f"1.4.{i}", [f"blob {i}".encode()]).location: i for i in range(10)}
    store.close()
    reopened = open_store()
    assert sorted(reopened.locations()) == sorted(infos)
    for location, i in infos.items():
        assert reopened.get(location) == f"blob {i}".encode()


def test_concurrent_puts(store: BlobStore) -> None:
    results: dict[str, bytes] = {}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(25):
                data = f"{t}-{i}".encode() * 100
                key = f"1.5.{i % 5}"  # threads share keys: no put may clobber another
                info = store.put(key, [data])
                with lock:
                    results[info.location] = data
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(results) == 200
    assert sorted(store.locations()) == sorted(results)
    for location, data in results.items():
        assert store.get(location) == data


def test_group_commit_puts(open_store: Callable[[], BlobStore]) -> None:
    store = open_store()
    infos = [store.put(f"1.6.{i}", [PAYLOAD[:i]], durable=False) for i in range(30)]
    assert store.get(infos[7].location) == PAYLOAD[:7]  # readable before the flush
    store.flush()
    store.flush()  # nothing pending: a no-op
    store.close()
    reopened = open_store()
    assert sorted(reopened.locations()) == sorted(i.location for i in infos)
    for i, info in enumerate(infos):
        assert reopened.get(info.location) == PAYLOAD[:i]


def test_delete_survives_reopen(open_store: Callable[[], BlobStore]) -> None:
    store = open_store()
    kept = store.put("1.7.1", [b"kept"])
    gone = store.put("1.7.2", [b"gone"])
    store.delete(gone.location)
    store.close()
    reopened = open_store()
    assert list(reopened.locations()) == [kept.location]
    with pytest.raises(BlobNotFound):
        reopened.get(gone.location)
    with pytest.raises(BlobNotFound):
        reopened.delete(gone.location)
    assert reopened.get(kept.location) == b"kept"


def test_closed_store_refuses(store: BlobStore) -> None:
    info = store.put("1.8.1", [b"x"])
    store.close()
    with pytest.raises(StorageError):
        store.get(info.location)
    with pytest.raises(StorageError):
        store.put("1.8.2", [b"x"])


def test_export(store: BlobStore, tmp_path: Path) -> None:
    a = store.put("1.9.1", [PAYLOAD])
    b = store.put("1.9.2", [b"DICM"])
    out = tmp_path / "out"
    assert export(store, [(a.location, "a.dcm"), (b.location, "b.dcm")], out) == 2
    assert (out / "a.dcm").read_bytes() == PAYLOAD and (out / "b.dcm").read_bytes() == b"DICM"
    with pytest.raises(ValueError):
        export(store, [(a.location, "../x.dcm")], out)
    with pytest.raises(BlobNotFound):
        export(store, [("nope", "c.dcm")], out)
    assert sorted(p.name for p in out.iterdir()) == ["a.dcm", "b.dcm"]
