"""The ingest load generator's receiver names (bench/ingest.py)."""

from __future__ import annotations

import pytest

from bench.ingest import pacs_receiver


@pytest.mark.parametrize(
    ("name", "workers", "env"),
    [
        ("pacs", "0", {}),
        ("pacs-w1", "1", {}),
        ("pacs-w2", "2", {}),
        ("pacs-w1+sync_spin=0", "1", {"PACS_SYNC_SPIN": "0"}),
        ("pacs+index_during_sync=false+sync_spin=0.001", "0",
         {"PACS_INDEX_DURING_SYNC": "false", "PACS_SYNC_SPIN": "0.001"}),
        ("pacs-w2+min_free_space=a=b", "2", {"PACS_MIN_FREE_SPACE": "a=b"}),
    ],
)
def test_pacs_receiver_names(name: str, workers: str, env: dict[str, str]) -> None:
    assert pacs_receiver(name) == (workers, env)


@pytest.mark.parametrize("name", ["pacs-w1+sync_spin", "pacs-wx", "pacs-w1+=3", "pacsy"])
def test_pacs_receiver_bad_names(name: str) -> None:
    with pytest.raises(ValueError, match="receiver"):
        pacs_receiver(name)
