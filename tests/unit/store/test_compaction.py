"""Segment compaction: space reclaimed, nothing lost, and a crash at every step is harmless."""

from __future__ import annotations

import errno
import os
from collections import Counter
from pathlib import Path

import pytest

from pacs.errors import BlobNotFound
from pacs.store import compaction
from pacs.store import segment_format as fmt
from pacs.store.segments import SegmentStore

SIZE = 8192


class FakeCatalog:
    """key -> location, as the LMDB catalog keeps it; relocate is one 'transaction'."""

    def __init__(self) -> None:
        self.where: dict[str, str] = {}
        self.data: dict[str, bytes] = {}

    def is_live(self, location: str) -> bool:
        return location in set(self.where.values())

    def relocate(self, mapping: dict[str, str]) -> None:
        for key, location in self.where.items():
            if location in mapping:
                self.where[key] = mapping[location]

    def check(self, store: SegmentStore) -> None:
        for key, location in self.where.items():
            assert store.get(location) == self.data[key], key
        # Nothing deleted comes back; duplicates (after a crash) are of live keys only.
        assert {k for _loc, k in store.iter_records()} == set(self.where)


def fill(store: SegmentStore, catalog: FakeCatalog, n: int = 60, keep_every: int = 3) -> None:
    for i in range(n):
        key = f"1.2.{i}"
        data = (key.encode() + b"|") * (50 + i)
        catalog.where[key] = store.put(key, [data], durable=False).location
        catalog.data[key] = data
    store.flush()
    for i in range(n):
        if i % keep_every:
            key = f"1.2.{i}"
            store.delete(catalog.where.pop(key))
            del catalog.data[key]


def disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.glob("*.seg"))


def test_compaction_reclaims_space(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path, segment_size=SIZE)
    catalog = FakeCatalog()
    fill(store, catalog)
    before = disk_bytes(tmp_path)
    old_segments = set(store.segments())
    report = store.compact(catalog.is_live, catalog.relocate)
    assert report.removed and report.created
    assert report.moved == sum(loc.startswith("compact-") for loc in catalog.where.values())
    assert disk_bytes(tmp_path) == before - report.reclaimed
    assert report.reclaimed > before // 2
    catalog.check(store)
    assert sorted(store.locations()) == sorted(catalog.where.values())
    # The active segment (and the highest of each owner) was left alone.
    assert store.segments()[-1] in old_segments
    # Compacting again finds nothing worth doing; new puts still work.
    assert not store.compact(catalog.is_live, catalog.relocate).removed
    catalog.where["1.3"] = store.put("1.3", [b"new"]).location
    catalog.data["1.3"] = b"new"
    store.close()
    catalog.check(SegmentStore(tmp_path, segment_size=SIZE))


def test_stale_location_in_another_process(tmp_path: Path) -> None:
    a = SegmentStore(tmp_path, segment_size=SIZE)
    reader = SegmentStore(tmp_path, writer_id="r", segment_size=SIZE)
    catalog = FakeCatalog()
    fill(a, catalog)
    moved_key = "1.2.0"
    old = catalog.where[moved_key]
    assert reader.get(old) == catalog.data[moved_key]  # caches a descriptor on the old segment
    a.compact(catalog.is_live, catalog.relocate)
    assert catalog.where[moved_key] != old
    with pytest.raises(BlobNotFound):
        reader.get(old)
    assert reader.get(catalog.where[moved_key]) == catalog.data[moved_key]


def test_min_dead_fraction(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path, segment_size=SIZE)
    catalog = FakeCatalog()
    fill(store, catalog, keep_every=2)  # half dead
    assert not store.compact(catalog.is_live, catalog.relocate, min_dead_fraction=0.9).removed
    assert store.compact(catalog.is_live, catalog.relocate, min_dead_fraction=0.4).removed
    catalog.check(store)


def test_catalog_decides_liveness(tmp_path: Path) -> None:
    """Blobs the catalog forgot without a tombstone (e.g. replaced duplicates) are reclaimed."""
    store = SegmentStore(tmp_path, segment_size=SIZE)
    catalog = FakeCatalog()
    fill(store, catalog, keep_every=1)
    for key in list(catalog.where)[:40]:
        del catalog.where[key], catalog.data[key]
    assert store.compact(catalog.is_live, catalog.relocate).removed
    catalog.check(store)


@pytest.mark.parametrize("broken", [("copy_file_range",), ("copy_file_range", "sendfile")])
def test_compaction_without_copy_file_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken: tuple[str, ...]
) -> None:
    """The copy fallbacks move each record's own bytes (they once copied from offset 0)."""
    store = SegmentStore(tmp_path, segment_size=SIZE)
    catalog = FakeCatalog()
    fill(store, catalog)

    def refuse(*args: object) -> int:
        raise OSError(errno.ENOSYS, "Function not implemented")

    for name in broken:
        monkeypatch.setattr(os, name, refuse)
    report = store.compact(catalog.is_live, catalog.relocate)
    assert report.moved and report.removed
    catalog.check(store)
    monkeypatch.undo()
    store.close()
    catalog.check(SegmentStore(tmp_path, segment_size=SIZE))


class Crash(Exception):
    pass


@pytest.mark.parametrize(
    "step", ["copied", "sealed", "renamed", "relocate", "relocated", "unlinked"]
)
def test_crash_at_each_step_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    store = SegmentStore(tmp_path, segment_size=SIZE)
    catalog = FakeCatalog()
    fill(store, catalog)

    def hook(name: str) -> None:
        if name == step:
            raise Crash(name)

    def failing_relocate(mapping: dict[str, str]) -> None:
        raise Crash("relocate")  # the catalog transaction aborted: nothing changed

    monkeypatch.setattr(compaction, "crash_hook", hook)
    relocate = failing_relocate if step == "relocate" else catalog.relocate
    with pytest.raises(Crash):
        store.compact(catalog.is_live, relocate)
    monkeypatch.setattr(compaction, "crash_hook", None)
    store.close()  # the "process" dies; a new one opens the root

    reopened = SegmentStore(tmp_path, segment_size=SIZE)
    catalog.check(reopened)
    reopened.compact(catalog.is_live, catalog.relocate)
    catalog.check(reopened)
    blobs(reopened, catalog)  # more data, more segments: leftovers are now compactable too
    reopened.compact(catalog.is_live, catalog.relocate, min_dead_fraction=0.01)
    catalog.check(reopened)
    assert sorted(reopened.locations()) == sorted(catalog.where.values())
    assert not list(tmp_path.glob("*.tmp"))


def blobs(store: SegmentStore, catalog: FakeCatalog) -> None:
    for i in range(30):
        key = f"1.9.{i}"
        catalog.data[key] = key.encode() * 40
        catalog.where[key] = store.put(key, [catalog.data[key]]).location


@pytest.mark.parametrize("step", ["renamed", "relocated"])
def test_a_delete_after_a_crash_covers_both_copies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """Killed after its rename, a compaction leaves moved records twice; a delete then
    tombstones the catalog's copy only. The other copy must stay dead, through every later
    compaction (each killed after its first unlink here), until both are gone."""
    store = SegmentStore(tmp_path, segment_size=SIZE)
    catalog = FakeCatalog()
    fill(store, catalog)

    def crash_at(wanted: str) -> None:
        def hook(name: str) -> None:
            if name == wanted:
                raise Crash(name)

        monkeypatch.setattr(compaction, "crash_hook", hook)

    crash_at(step)
    with pytest.raises(Crash):
        store.compact(catalog.is_live, catalog.relocate)
    twice = {k for k, n in Counter(k for _loc, k in store.iter_records()).items() if n == 2}
    assert twice
    for key in sorted(twice)[::2]:
        store.delete(catalog.where.pop(key))
        del catalog.data[key]
    blobs(store, catalog)  # the tombstones' segment is sealed: it may be compacted too
    crash_at("unlinked")
    for _ in range(50):
        catalog.check(store)
        try:
            store.compact(catalog.is_live, catalog.relocate, min_dead_fraction=0.01)
            break
        except Crash:
            store.close()
            store = SegmentStore(tmp_path, segment_size=SIZE)
    monkeypatch.setattr(compaction, "crash_hook", None)
    catalog.check(store)
    assert sorted(store.locations()) == sorted(catalog.where.values())


def _compact_index(origins: list[str]) -> fmt.SegmentIndex:
    """A compact segment's index: record i at data offset 100 * (i + 1), 10 bytes, naming the
    given origin."""
    records = [(100 * (i + 1), 10, f"1.2.{i}") for i in range(len(origins))]
    raw = fmt.encode_index(b"".join(fmt.encode_record_entry(o, n, k.encode())
                                    for o, n, k in records), len(records), [], origins)
    return fmt.SegmentIndex(records, sealed=True,
                            source_section=raw[raw.index(b"SRC1") + 4 :])


def test_copy_groups_are_built_for_dead_records_only() -> None:
    """The origin each copy names is the key of its group: a tombstone of any copy, or of the
    origin, covers the origin and every copy; groups without a dead member are not built."""
    a, b, c = (fmt.format_location("w0-00000001.seg", 100 * i, 10) for i in (1, 2, 3))
    indexes = {
        "compact-00000001.seg": _compact_index([a, b, c]),
        "compact-00000002.seg": _compact_index([a, b]),
        "w0-00000002.seg": fmt.SegmentIndex([(100, 10, "1.2.9")], sealed=True),
    }
    first = "compact-00000001.seg:{}:10".format
    second = "compact-00000002.seg:{}:10".format
    assert fmt.copy_groups(indexes, set()) == {}
    assert fmt.copy_groups(indexes, {"w0-00000002.seg:100:10"}) == {}
    groups = fmt.copy_groups(indexes, {second(100), b})
    assert sorted(groups) == sorted([a, first(100), second(100), b, first(200), second(200)])
    assert sorted(groups[first(100)]) == sorted([a, first(100), second(100)])
    assert sorted(groups[b]) == sorted([b, first(200), second(200)])
    # A tombstone naming no record of a compact segment ties nothing.
    assert fmt.copy_groups(indexes, {first(999)}) == {}


def test_a_compaction_builds_the_copy_groups_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SegmentStore(tmp_path, segment_size=SIZE)
    catalog = FakeCatalog()
    fill(store, catalog)
    calls = []
    real = fmt.copy_groups

    def counted(*args: object) -> dict[str, list[str]]:
        calls.append(1)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(fmt, "copy_groups", counted)
    store.compact(catalog.is_live, catalog.relocate)
    assert len(calls) == 1
    catalog.check(store)


def test_replay_sees_a_record_dead_when_its_copy_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed between relocate and unlink, a compaction leaves the moved records twice; a delete
    of the relocated copy must kill the original for a replay of the writer's records too."""
    store = SegmentStore(tmp_path, segment_size=SIZE)
    catalog = FakeCatalog()
    fill(store, catalog)

    def hook(name: str) -> None:
        if name == "relocated":
            raise Crash(name)

    monkeypatch.setattr(compaction, "crash_hook", hook)
    with pytest.raises(Crash):
        store.compact(catalog.is_live, catalog.relocate)
    monkeypatch.setattr(compaction, "crash_hook", None)
    moved = sorted(k for k, loc in catalog.where.items() if loc.startswith("compact-"))
    assert moved
    for key in moved:
        store.delete(catalog.where.pop(key))
    store.close()
    store = SegmentStore(tmp_path, segment_size=SIZE)
    replayed = {key for _loc, key in store.iter_own_records()}
    assert replayed == set(catalog.where)
    assert not replayed & set(moved)
    store.close()
