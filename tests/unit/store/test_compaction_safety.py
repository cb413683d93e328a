"""Compaction never loses an acknowledged instance: a store still in flight in another worker
keeps its segment, and the catalog's relocation is on disk before any old segment is unlinked.

Real segment stores and catalogs (``durable_commits=False``, as the server opens it); the
in-flight state is built directly: blobs written, only some indexed, checkpoints set by hand.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import pytest

from pacs.errors import BlobNotFound, CatalogError
from pacs.index.catalog import Catalog
from pacs.maintenance import compact_segments
from pacs.recovery import checkpoint_name
from pacs.store.segment_format import parse_segment_name, segment_name
from pacs.store.segments import SegmentStore
from pacs.writers import drop_replay_all_marker, leave_replay_all_marker
from tests.unit.index._records import make_record

SIZE = 8192  # about ten records per segment
WRITER = "w0"


class World:
    """One writer's store and the catalog, plus what each indexed instance must read back."""

    def __init__(self, root: Path) -> None:
        self.store = SegmentStore(root / "blobs", writer_id=WRITER, segment_size=SIZE)
        self.catalog = Catalog(root / "index", durable_commits=False)
        self.data: dict[str, bytes] = {}  # SOP Instance UID -> bytes, of indexed instances

    def put(self, uid: str, tag: str = "") -> tuple[str, bytes]:
        data = f"{uid}{tag}|".encode() * (700 // (len(uid) + len(tag) + 1))
        return self.store.put(uid, [data], durable=False).location, data

    def index(self, uid: str, location: str, data: bytes) -> None:
        record = make_record("P1", "1.2.1", "1.2.1.1", uid, size=len(data), location=location)
        self.catalog.store_batch([record], on_duplicate="replace")
        self.data[uid] = data

    def delete(self, uid: str) -> None:
        record = self.catalog.delete_instance(uid)
        assert record is not None
        self.store.delete(record.location)
        del self.data[uid]

    def location(self, uid: str) -> str:
        record = self.catalog.get_instance(uid)
        assert record is not None, uid
        return record.location

    def check(self) -> None:
        """Every indexed instance reads back whole where the catalog says."""
        for uid, data in self.data.items():
            assert self.store.get(self.location(uid)) == data, uid

    def fill(self, n: int, first: int = 0) -> list[str]:
        uids = [f"1.2.1.1.{i}" for i in range(first, first + n)]
        for uid in uids:
            self.index(uid, *self.put(uid))
        return uids

    def checkpoint(self, segment: str) -> None:
        self.catalog.checkpoint(checkpoint_name(WRITER), segment)

    def close(self) -> None:
        self.catalog.close()
        self.store.close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.close()


def segment_of(location: str) -> str:
    return location.split(":", 1)[0]


def next_segment(segment: str) -> str:
    owner, seq = parse_segment_name(segment) or ("", 0)
    return segment_name(owner, seq + 1)


def in_flight(world: World, resent: bool) -> tuple[str, str, bytes]:
    """A store another worker has written (its segment since sealed by a roll) but not yet
    committed, in a segment otherwise all deleted: (uid, location, bytes).

    ``resent``: the instance is already indexed elsewhere and this is its replacement."""
    uids = world.fill(15)
    uid = uids[0] if resent else "1.2.1.1.999"
    location, data = world.put(uid, tag="new")
    uids += world.fill(30, first=15)
    world.store.flush()
    segment = segment_of(location)
    assert segment != world.store.active_segment  # sealed by a roll, not the highest
    for u in uids:
        if segment_of(world.location(u)) == segment:
            world.delete(u)
    assert not resent or segment_of(world.location(uid)) != segment
    return uid, location, data


# -- finding 1: a record in flight in another worker is not dead -------------------------------


@pytest.mark.parametrize("resent", [False, True], ids=["new", "resent"])
@pytest.mark.parametrize("checkpoint", ["at", "missing"])
def test_store_in_flight_keeps_its_segment(world: World, resent: bool, checkpoint: str) -> None:
    uid, location, data = in_flight(world, resent)
    segment = segment_of(location)
    if checkpoint == "at":  # the writer's oldest segment with a store not yet committed
        world.checkpoint(segment)
    report = compact_segments(world.catalog, world.store, 0.5)
    assert world.store.get(location) == data
    assert segment not in report.removed
    assert segment in report.deferred
    # The other worker now commits with the location it wrote and answers success.
    world.index(uid, location, data)
    world.check()
    # Once the checkpoint has passed, the next compaction moves it like any live record.
    world.checkpoint(world.store.active_segment)
    report = compact_segments(world.catalog, world.store, 0.5)
    assert segment in report.removed
    assert segment_of(world.location(uid)).startswith("compact-")
    world.check()


@pytest.mark.parametrize("resent", [False, True], ids=["new", "resent"])
def test_unindexed_record_behind_the_checkpoint_is_reclaimed(world: World, resent: bool) -> None:
    """Its writer committed or gave up everything in that segment: the record is garbage."""
    uid, location, _data = in_flight(world, resent)
    segment = segment_of(location)
    world.checkpoint(next_segment(segment))
    report = compact_segments(world.catalog, world.store, 0.5)
    assert segment in report.removed
    assert not report.deferred
    with pytest.raises(BlobNotFound):
        world.store.get(location)
    assert location not in dict(world.store.iter_records())
    if resent:
        assert uid in world.data  # the indexed copy stays
    world.check()


def test_a_writer_due_to_replay_its_whole_log_has_no_checkpoint_to_trust(
        world: World, tmp_path: Path) -> None:
    """Its checkpoint may have passed commits a failed catalog sync lost (``replay-all``
    marker): an unindexed record of it may be such an acknowledged instance, which the next
    start re-indexes. Compaction leaves its segment alone until then."""
    _uid, location, data = in_flight(world, False)
    segment = segment_of(location)
    world.checkpoint(next_segment(segment))
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    leave_replay_all_marker(state_dir, WRITER, "a catalog checkpoint failed (test)")
    report = compact_segments(world.catalog, world.store, 0.5, state_dir=state_dir)
    assert segment in report.deferred and segment not in report.removed
    assert world.store.get(location) == data
    drop_replay_all_marker(state_dir, WRITER)
    assert segment in compact_segments(world.catalog, world.store, 0.5,
                                       state_dir=state_dir).removed


def test_unindexed_record_in_a_compacted_segment_is_reclaimed(world: World) -> None:
    """Decision: compact-* segments are no writer's log and have no checkpoint; their records
    were indexed when copied, so one the catalog no longer points at is dead."""
    uids = world.fill(40)
    world.store.flush()
    segments = sorted({segment_of(world.location(u)) for u in uids})
    first, second = segments[0], segments[1]
    survivors = [u for u in uids if segment_of(world.location(u)) == first][:2]
    for u in uids:
        if segment_of(world.location(u)) == first and u not in survivors:
            world.delete(u)
    assert compact_segments(world.catalog, world.store, 0.5).created == ["compact-00000001.seg"]
    uids = list(world.data)
    kept = next(u for u in uids if segment_of(world.location(u)) == second)
    for u in uids:
        if segment_of(world.location(u)) == second and u != kept:
            world.delete(u)
    assert compact_segments(world.catalog, world.store, 0.5).created == ["compact-00000002.seg"]
    # The catalog forgets the survivors without tombstones (e.g. a crash before them).
    for u in survivors:
        assert world.catalog.delete_instance(u) is not None
        del world.data[u]
    report = compact_segments(world.catalog, world.store, 0.5)
    assert "compact-00000001.seg" in report.removed
    assert not report.deferred
    world.check()


# -- finding 2: the relocation is durable before an old segment is unlinked ---------------------


class EnvProbe:
    """The catalog's LMDB environment, its syncs noted (and failed on demand)."""

    def __init__(self, env: Any, events: list[str]) -> None:
        self._env = env
        self.events = events
        self.fail = False

    def sync(self, force: bool = False) -> None:
        self.events.append("sync")
        if self.fail:
            raise lmdb.Error("injected: fdatasync failed")
        self._env.sync(force)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._env, name)


def probe(world: World, monkeypatch: pytest.MonkeyPatch) -> EnvProbe:
    events: list[str] = []
    env = EnvProbe(world.catalog._env, events)
    monkeypatch.setattr(world.catalog, "_env", env)
    real_unlink = os.unlink

    def unlink(path: Any, *args: Any, **kwargs: Any) -> None:
        events.append(f"unlink {Path(path).name}")
        real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)
    return env


def mostly_dead(world: World, keep_every: int) -> list[str]:
    """Sealed segments where only every ``keep_every``-th instance is still indexed (none when
    0); the sealed segments, by name."""
    uids = world.fill(40)
    world.store.flush()
    for i, uid in enumerate(uids):
        if (not keep_every or i % keep_every) and (
            segment_of(world.location(uid)) != world.store.active_segment
        ):
            world.delete(uid)
    sealed = set(world.store.segments()) - {world.store.active_segment}
    return sorted(sealed)


@pytest.mark.parametrize("keep_every", [3, 0], ids=["some_live", "all_dead"])
def test_catalog_is_synced_before_the_first_unlink(
    world: World, monkeypatch: pytest.MonkeyPatch, keep_every: int
) -> None:
    sealed = mostly_dead(world, keep_every)
    env = probe(world, monkeypatch)
    report = compact_segments(world.catalog, world.store, 0.5)
    assert sorted(report.removed) == sealed
    assert bool(report.moved) == bool(keep_every)
    unlinks = [i for i, e in enumerate(env.events) if e.startswith("unlink ")]
    assert unlinks, env.events
    assert "sync" in env.events[: unlinks[0]], env.events
    world.check()


def test_failed_sync_unlinks_nothing(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    sealed = mostly_dead(world, 3)
    before = {uid: world.location(uid) for uid in world.data}
    env = probe(world, monkeypatch)
    env.fail = True
    with pytest.raises(CatalogError, match="sync failed"):
        compact_segments(world.catalog, world.store, 0.5)
    assert not [e for e in env.events if e.startswith("unlink ")], env.events
    assert set(sealed) <= set(world.store.segments())
    # Readable where the (visible) catalog points now, and where a catalog reverted by a power
    # cut would point: the old copies are all still there.
    world.check()
    for uid, location in before.items():
        assert world.store.get(location) == world.data[uid], uid
    # Once syncs work again, the old segments are garbage the next compaction removes.
    env.fail = False
    world.checkpoint(world.store.active_segment)
    report = compact_segments(world.catalog, world.store, 0.5)
    assert set(sealed) <= set(report.removed)
    world.check()
