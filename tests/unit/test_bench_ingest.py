"""The ingest load generator's receiver names and CPU accounting (bench/ingest.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import bench.ingest
from bench.ingest import idle_share, machine_cpu, pacs_receiver, storescu_commands


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


STAT = """cpu  3670547 7421 990386 5930087 104994 0 81258 2013 0 0
cpu0 1344734 3297 407519 3581079 29475 0 30085 925 0 0
intr 1 2 3
"""


def test_machine_cpu_reads_the_aggregate_line() -> None:
    idle, total = machine_cpu(STAT)
    assert idle == 5930087 + 104994  # idle + iowait
    assert total == 3670547 + 7421 + 990386 + 5930087 + 104994 + 0 + 81258 + 2013


def test_machine_cpu_of_this_machine_moves_forward() -> None:
    idle0, total0 = machine_cpu()
    sum(range(2_000_000))  # some CPU, so the ticks move
    time.sleep(0.05)
    idle1, total1 = machine_cpu()
    assert total1 > total0 and 0 <= idle1 - idle0 <= total1 - total0


def test_idle_share() -> None:
    assert idle_share((100, 1000), (175, 1100)) == pytest.approx(0.75)
    assert idle_share((100, 1000), (100, 1100)) == 0.0
    assert idle_share((100, 1000), (100, 1000)) == 0.0  # no tick between the readings


def test_machine_cpu_refuses_a_text_without_cpu_line() -> None:
    with pytest.raises(ValueError, match="cpu line"):
        machine_cpu("intr 1 2 3\n")


def _folders(root: Path) -> list[Path]:
    dirs = [root / "stream0", root / "stream1"]
    for d in dirs:
        d.mkdir()
        for name in ("000009.dcm", "000001.dcm", "000100.dcm", "000042.dcm"):
            (d / name).write_bytes(b"")
    return dirs


def test_storescu_sends_each_folder_in_name_order(tmp_path: Path) -> None:
    commands = storescu_commands(_folders(tmp_path), 11112, "PACS", "BENCH")
    assert len(commands) == 2
    for command, folder in zip(commands, ("stream0", "stream1"), strict=True):
        assert command[:8] == ["storescu", "-aec", "PACS", "-aet", "BENCH", "--max-pdu",
                               "131072", "127.0.0.1"]
        assert command[8] == "11112"
        assert command[9:] == [str(tmp_path / folder / n) for n in
                               ("000001.dcm", "000009.dcm", "000042.dcm", "000100.dcm")]


def test_storescu_scans_a_folder_too_long_for_a_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench.ingest, "ARG_LIST_LIMIT", 50)
    commands = storescu_commands(_folders(tmp_path), 11112, "PACS", "BENCH")
    assert commands[0][7:] == ["+sd", "127.0.0.1", "11112", str(tmp_path / "stream0")]
