"""bench/bench_commit.py still commits what ingest would (it builds records by hand, so a change
of the catalog or of the record could break it silently): a short run indexes every record, in
both conditions, and reports some CPU; the floor replays exactly the LMDB operations a run
commits (a catalog rebuilt from them holds the same data)."""

from __future__ import annotations

from pathlib import Path

import lmdb
import pytest

from bench.bench_commit import floor, operations, records, run
from pacs.index.catalog import Catalog


def _uids(folder: Path) -> set[str]:
    catalog = Catalog(folder)
    try:
        return {r.sop_instance_uid for r in catalog.iter_instances()}
    finally:
        catalog.close()


@pytest.mark.parametrize("polluted", [False, True])
def test_a_short_run_indexes_every_record(tmp_path: Path, polluted: bool) -> None:
    made = records(30)
    assert run(tmp_path / "index", made, 2, polluted) > 0
    assert _uids(tmp_path / "index") == {r.sop_instance_uid for r in made}


def test_streams_interleave_studies() -> None:
    made = records(12, streams=3)
    studies = [r.attributes["StudyInstanceUID"] for r in made]
    assert len(set(studies)) == 3
    assert studies[:3] == studies[3:6] == studies[9:12]  # one of each in turn
    assert len({r.attributes["PatientID"] for r in made}) == 3


def _contents(folder: Path) -> dict[str, list[tuple[bytes, bytes]]]:
    """Every named database's items, read with LMDB itself."""
    env = lmdb.open(str(folder), readonly=True, lock=False, max_dbs=64)
    try:
        with env.begin() as txn:
            names = [bytes(k) for k, _ in txn.cursor()]
            out = {}
            for name in names:
                db = env.open_db(name, txn=txn, create=False)
                out[name.decode()] = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=db)]
            return out
    finally:
        env.close()


def test_the_floor_replays_what_a_run_commits(tmp_path: Path) -> None:
    made = records(30, streams=3)
    ops = operations(tmp_path / "recorded", made, 2)
    assert len(ops) == 15  # one transaction of two records at a time
    assert all(any(op[0] == "put" and op[1] == "instances" for op in txn) for txn in ops)
    assert floor(tmp_path / "replayed", ops, polluted=True) > 0
    recorded, replayed = _contents(tmp_path / "recorded"), _contents(tmp_path / "replayed")
    assert replayed["instances"] and replayed == recorded
    assert _uids(tmp_path / "replayed") == {r.sop_instance_uid for r in made}
