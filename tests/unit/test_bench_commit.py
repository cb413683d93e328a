"""bench/bench_commit.py still commits what ingest would (it builds records by hand, so a change
of the catalog or of the record could break it silently): a short run indexes every record, in
both conditions, and reports some CPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.bench_commit import records, run
from pacs.index.catalog import Catalog


@pytest.mark.parametrize("polluted", [False, True])
def test_a_short_run_indexes_every_record(tmp_path: Path, polluted: bool) -> None:
    made = records(30)
    assert run(tmp_path / "index", made, 2, polluted) > 0
    catalog = Catalog(tmp_path / "index")
    try:
        indexed = {r.sop_instance_uid for r in catalog.iter_instances()}
    finally:
        catalog.close()
    assert indexed == {r.sop_instance_uid for r in made}
