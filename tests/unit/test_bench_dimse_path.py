"""bench/bench_dimse_path.py still drives the real protocol stack (it builds the server by hand,
so a new attribute of DimseServer could break it silently): a short run of each level answers
every C-STORE (the harness asserts the response count) and reports some CPU."""

from __future__ import annotations

from bench.bench_dimse_path import bench_assoc, bench_protocol


def test_the_association_level_runs() -> None:
    assert bench_assoc(50) > 0


def test_the_protocol_level_answers_every_store() -> None:
    assert bench_protocol(50) > 0
