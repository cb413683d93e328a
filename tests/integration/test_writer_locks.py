"""Each worker holds its segment writer's lock: a second `pacs serve` on the same data folder
refuses to start instead of appending to the same segments."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, free_port


def test_a_second_server_on_the_same_data_folder_refuses_to_start(archive_factory) -> None:
    first = archive_factory("--workers", "2")
    proc = subprocess.run(
        [sys.executable, "-m", "pacs", "serve", "--data-dir", str(first.data_dir),
         "--host", "127.0.0.1", "--port", str(free_port()), "--http-port", "0",
         "--workers", "1"],
        capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 2, proc.stderr
    assert "writer w0 of" in proc.stderr and "is in use by another process" in proc.stderr
    assert first.alive()  # the first one serves on
    assert Path(first.data_dir / "state" / "w1.lock").exists()
