"""``pacs export`` while a server runs on the archive: what it writes is whole and current."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pacs.archive import open_catalog
from pacs.config import Settings
from pacs.index.catalog import Catalog
from pacs.index.records import InstanceRecord
from pacs.maintenance import compact_segments, export_command
from pacs.store.segments import SegmentStore
from tests.unit.index.test_maintenance import compactable


def test_export_follows_an_instance_a_compaction_moves_meanwhile(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(data_dir=tmp_path / "data", lmdb_map_size=1 << 28)
    catalog = open_catalog(settings)
    try:
        server, moved = compactable(settings.blob_dir, catalog)
        server.close()
        expected = {r.sop_instance_uid: r.size for r in catalog.iter_instances()}
    finally:
        catalog.close()
    listing = Catalog.iter_instances

    def compact_after_the_first_record(self: Catalog,
                                       chunk: int = 1000) -> Iterator[InstanceRecord]:
        records = listing(self, chunk)
        first = next(records)
        server = SegmentStore(settings.blob_dir, segment_size=4096, prefill=0, direct_min=0)
        try:  # the server's periodic compaction
            assert compact_segments(self, server, 0.5).moved == 1
        finally:
            server.close()
        yield first
        yield from records

    monkeypatch.setattr(Catalog, "iter_instances", compact_after_the_first_record)
    out = tmp_path / "export"
    assert export_command(settings, out, {}) == 0
    written = {f.stem: f.stat().st_size for f in out.rglob("*") if f.is_file()}
    assert written == expected
    assert moved[0] in written


def test_a_failed_export_leaves_no_partial_file(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", lmdb_map_size=1 << 28)
    catalog = open_catalog(settings)
    try:
        server, _ = compactable(settings.blob_dir, catalog)
        try:  # its blob unreadable (tombstoned), its entry left: one export fails
            gone = next(catalog.iter_instances())
            server.delete(gone.location)
        finally:
            server.close()
        indexed = sum(1 for _ in catalog.iter_instances())
    finally:
        catalog.close()
    out = tmp_path / "export"
    assert export_command(settings, out, {}) == 1
    written = sorted(f.name for f in out.rglob("*") if f.is_file())
    assert len(written) == indexed - 1
    assert all(name.endswith(".dcm") for name in written)
    assert f"{gone.sop_instance_uid}.dcm" not in written
