"""Random store/replace/delete sequences keep every count consistent with the records."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pacs.index.catalog import Catalog, OnDuplicate
from pacs.index.records import InstanceRecord
from tests.unit.index._records import DELETE_OP, check_consistent, make_record, store_op

_op = st.one_of(store_op(), DELETE_OP)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(st.lists(_op, min_size=1, max_size=6), min_size=1, max_size=5))
def test_random_operations_stay_consistent(batches: list[list[tuple[Any, ...]]]) -> None:
    model: dict[str, tuple[str, int]] = {}  # SOPInstanceUID -> (location, size)
    n = 0
    with tempfile.TemporaryDirectory() as tmp, Catalog(Path(tmp), map_size=1 << 22) as catalog:
        for batch in batches:
            stores: list[tuple[InstanceRecord, OnDuplicate]] = []
            for op in batch:
                if op[0] == "delete":
                    if stores:  # flush so that the delete sees the stores before it
                        catalog.store_items(stores)
                        stores = []
                    gone = catalog.delete_instance(op[1])
                    assert (gone is None) == (op[1] not in model)
                    model.pop(op[1], None)
                    continue
                policy, patient, study, series, sop, size = op
                n += 1
                location = f"blob/{n}"
                stores.append((make_record(patient, study, series, sop, size, location), policy))
                if policy == "replace" or sop not in model:
                    model[sop] = (location, size)
            if stores:
                catalog.store_items(stores)
            check_consistent(catalog)
            assert {
                r.sop_instance_uid: (r.location, r.size) for r in catalog.iter_instances()
            } == model
